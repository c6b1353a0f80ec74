/* Draws the report page's two charts from the JSON the server put in the page
   (json_script); the same numbers are in the tables beside them. */
"use strict";

(function () {
  const source = document.getElementById("report-chart-data");
  if (!source || typeof window.Chart === "undefined") {
    return;
  }
  const data = JSON.parse(source.textContent);
  const ChartJs = window.Chart;

  const trendCanvas = document.getElementById("trend-chart");
  if (trendCanvas) {
    new ChartJs(trendCanvas, {
      type: "bar",
      data: {
        labels: data.trend.labels,
        datasets: data.trend.datasets.map(function (set) {
          return {
            type: set.type,
            label: set.label,
            data: set.data,
            yAxisID: set.axis,
            // A period without entries has no rate: leave a gap rather than invent a line.
            spanGaps: false,
            // Funnels and tests have no order: their rates are points, not a line.
            showLine: set.line !== false,
            pointRadius: set.line === false ? 5 : 3,
          };
        }),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        // The legend below the plot, in small boxes: beside it, it ate the plot on a phone.
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } },
        scales: {
          people: {
            type: "linear",
            position: "left",
            beginAtZero: true,
            title: { display: true, text: data.trend.people_axis },
          },
          rate: {
            type: "linear",
            position: "right",
            beginAtZero: true,
            grid: { drawOnChartArea: false },
            title: { display: true, text: data.trend.rate_axis },
          },
        },
      },
    });
  }

  // Control groups: cumulative conversion by day, treatment and control, per period.
  (data.lift || []).forEach(function (chart) {
    const canvas = document.getElementById(chart.id);
    if (!canvas) {
      return;
    }
    new ChartJs(canvas, {
      type: "line",
      data: {
        labels: chart.labels,
        datasets: chart.datasets.map(function (set) {
          return { label: set.label, data: set.data, spanGaps: false, pointRadius: 2 };
        }),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } },
        scales: {
          x: { title: { display: true, text: chart.x_axis } },
          y: { beginAtZero: true, title: { display: true, text: chart.y_axis } },
        },
      },
    });
  });

  const histogramCanvas = document.getElementById("histogram-chart");
  if (histogramCanvas) {
    new ChartJs(histogramCanvas, {
      type: "bar",
      data: {
        labels: data.histogram.labels,
        datasets: [{ label: data.histogram.label, data: data.histogram.data }],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { title: { display: true, text: data.histogram.axis } },
          y: { beginAtZero: true },
        },
      },
    });
  }
})();

"""One-off tools for the switch from the earlier script-based tool, run by hand
(`manage.py adopt_legacy_entries`), never by the funnel job: adopting its `funnel_entries`
rows (legacy.py)."""

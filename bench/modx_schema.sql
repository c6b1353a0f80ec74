-- Copy of the shared stand-in DDL (domain/modx_schema.sql), unchanged below this line.
-- Stand-in for the MODX tables that the funnel job reads (MySQL / MariaDB).
-- Only the columns and keys known to exist in production; real tables have more columns.

CREATE TABLE IF NOT EXISTS simpletest_lang (
  Id INT NOT NULL AUTO_INCREMENT,
  PRIMARY KEY (Id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS simpletest_test (
  newid INT NOT NULL AUTO_INCREMENT,
  Id INT NOT NULL,
  LangId INT NOT NULL DEFAULT 0,
  PRIMARY KEY (newid),
  KEY idx_test_id (Id),
  KEY idx_lang (LangId)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS simpletest_users (
  Id INT NOT NULL AUTO_INCREMENT,
  Email VARCHAR(255) NULL,
  TestId INT NULL,
  Datep DATETIME NULL,
  Status INT NULL,
  PRIMARY KEY (Id),
  KEY idx_test (TestId),
  KEY idx_datep (Datep)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS modx_cert_users (
  id INT NOT NULL AUTO_INCREMENT,
  email VARCHAR(255) NULL,
  PRIMARY KEY (id),
  KEY idx_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS modx_cert_test (
  id INT NOT NULL AUTO_INCREMENT,
  type INT NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS modx_cert_result (
  id INT NOT NULL AUTO_INCREMENT,
  id_user INT NOT NULL,
  id_test INT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_user (id_user),
  KEY idx_test (id_test)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS modx_cert_payment (
  id INT NOT NULL AUTO_INCREMENT,
  id_result INT NOT NULL,
  id_status INT NOT NULL,
  datetime_payment DATETIME NULL,
  PRIMARY KEY (id),
  KEY idx_result (id_result)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

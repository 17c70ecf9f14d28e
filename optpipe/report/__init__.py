"""What a build reports: report.json, report.html, JUnit, manifest.json, provenance and MLflow."""

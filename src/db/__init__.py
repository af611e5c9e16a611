"""The database: series and instance rows; later the job queue."""

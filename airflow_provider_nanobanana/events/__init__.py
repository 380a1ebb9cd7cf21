"""New objects in S3, as S3 event notifications on an SQS queue announce them (event-driven runs)."""

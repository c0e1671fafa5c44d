"""The run directory: records, the manifest, the report, the model card, dataset formats."""

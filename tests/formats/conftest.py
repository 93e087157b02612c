"""tests/formats: readers and writers of the file formats, atomic output, provenance records.

Converted models come from the root conftest's session cache (`converted_model`: read-only, copy before changing);
plain helpers from tests/helpers.py. Fixtures that more than one module here needs belong in this file."""

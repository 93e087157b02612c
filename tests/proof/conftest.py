"""tests/proof: verification (the reference, the exact proof, fla's kernels beside it, the reports).

From the root conftest: `converted_model` (the session's cache of small converted models: read-only, copy before
changing) and `no_compute` (verify must refuse before building its streaming pair); plain helpers, such as
`call_main` for a command in this process, from tests/helpers.py. Fixtures that more than one module here needs
belong in this file."""

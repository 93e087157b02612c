"""The hostile inputs of the reliability campaigns, in one place: every broken, mutated or odd input the campaigns
give to the converter, the exporter or verify.

- `hostile.draw`: the seeded chooser every campaign draws its cases with;
- `hostile.checkpoints`: the forward campaign's seeded mutations of valid RWKV-LM checkpoints (`make_case`);
- `hostile.directories`: the valid fla directory attacked (BASE, `make_hf`, `write_dir`), hostile and odd
  config.json values, special paths, two weight sources and hostile pytorch_model.bin files;
- `hostile.mutations`: the export campaign's seeded mutations of that directory (`mutated_case`);
- `hostile.files`: truncation points, lying safetensors headers, broken shard indexes and tuned-state files.

Test modules import these; no test module imports another (tests/test_suite_layout.py)."""

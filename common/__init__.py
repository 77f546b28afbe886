"""What `reward`, `data_builders` and `mpo` share: record schema, IO, offline tiny Qwen2.5-VL, config parsing."""

raise ModuleNotFoundError(
    "recipes/ holds entry scripts, not a library: run them (`deepspeed recipes/<job>.py --config ...`) "
    "and import from the `common`, `reward`, `data_builders` and `mpo` packages instead."
)

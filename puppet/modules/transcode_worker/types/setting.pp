# @summary A value of the worker's configuration file (TOML): a string, a
#   number, a boolean, or a list of strings.
type Transcode_worker::Setting = Variant[String, Integer, Float, Boolean, Array[String]]

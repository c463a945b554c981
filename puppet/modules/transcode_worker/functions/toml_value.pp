# @summary Writes a setting as a TOML value: a basic string, a number, a
#   boolean, or an array of strings.
#
# @param value
#   The setting.
#
# @return [String] The TOML text of `value`.
function transcode_worker::toml_value(Transcode_worker::Setting $value) >> String {
  $value ? {
    String  => transcode_worker::toml_string($value),
    Array   => "[${value.map |$item| { transcode_worker::toml_string($item) }.join(', ')}]",
    default => String($value),
  }
}

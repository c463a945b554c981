# @summary Writes a string as a TOML basic string (quoted, with backslashes,
#   quotes and control characters escaped).
#
# @param value
#   The string.
#
# @return [String] `value` in double quotes.
function transcode_worker::toml_string(String $value) >> String {
  $escaped = $value.regsubst('\\\\', '\\\\\\\\', 'G')
  .regsubst('"', '\\\\"', 'G')
  .regsubst('\n', '\\\\n', 'G')
  .regsubst('\t', '\\\\t', 'G')
  .regsubst('\r', '\\\\r', 'G')
  "\"${escaped}\""
}

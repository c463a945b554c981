# @summary An absolute path that can be written inside single quotes in a
#   shell script and in supervisord and systemd files (no quote, no space, no
#   newline, no percent sign).
type Transcode_worker::Path = Pattern[/\A\/[^'"\s%\\]*\z/]

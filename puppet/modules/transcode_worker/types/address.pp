# @summary An IP address and port, as a socket address is written:
#   `127.0.0.1:3000`, `0.0.0.0:3000`, `[::1]:3000`.
type Transcode_worker::Address = Pattern[/\A(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):\d{1,5}\z/]

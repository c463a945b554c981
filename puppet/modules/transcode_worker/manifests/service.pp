# @summary Runs the workers under the chosen process manager.
#
# @api private
class transcode_worker::service {
  case $transcode_worker::service_manager {
    'systemd': { contain transcode_worker::service::systemd }
    default:   { contain transcode_worker::service::supervisord }
  }
}

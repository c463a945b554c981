# @summary Runs `worker_count` workers as instances of a systemd template
#   unit (`transcode-worker@01` ...), the alternative to supervisord.
#
# Lowering `worker_count` leaves the instances above it running: stop them
# with `systemctl disable --now transcode-worker@NN`.
#
# @api private
class transcode_worker::service::systemd {
  $program = $transcode_worker::program_name
  $unit_file = "/etc/systemd/system/${program}@.service"

  # Puppet reloads systemd itself when a unit file changes.
  file { $unit_file:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('transcode_worker/worker.service.epp', {
        'command'      => $transcode_worker::wrapper_path,
        'user'         => $transcode_worker::user,
        'group'        => $transcode_worker::group,
        'directory'    => $transcode_worker::state_dir,
        'stop_timeout' => $transcode_worker::effective_stop_timeout,
    }),
  }

  $restart_on = $transcode_worker::restart_on_change ? {
    true  => [
      File[$unit_file],
      File[$transcode_worker::binary_path],
      File[$transcode_worker::config_file],
      File[$transcode_worker::env_file],
      File[$transcode_worker::wrapper_path],
    ],
    false => [],
  }
  # No explicit provider: systemd is the default wherever systemd runs, and
  # the catalogue still compiles on a machine without it (CI containers).
  Integer[1, $transcode_worker::worker_count].each |$n| {
    service { sprintf('%s@%02d', $program, $n):
      ensure    => running,
      enable    => true,
      require   => File[$unit_file],
      subscribe => $restart_on,
    }
  }
}

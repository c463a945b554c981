# @summary Runs `worker_count` workers as instances of a systemd template
#   unit (`transcode-worker@01` ...), the alternative to supervisord, and
#   the dashboard and ingest (when enabled) as a unit each
#   (`transcode-worker-dashboard`, `transcode-worker-ingest`).
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
        'command'      => "${transcode_worker::wrapper_path} run",
        'user'         => $transcode_worker::user,
        'group'        => $transcode_worker::group,
        'directory'    => $transcode_worker::state_dir,
        'stop_timeout' => $transcode_worker::effective_stop_timeout,
    }),
  }

  # What a restart follows, for every unit.
  $shared_files = [
    File[$transcode_worker::binary_path],
    File[$transcode_worker::config_file],
    File[$transcode_worker::env_file],
    File[$transcode_worker::wrapper_path],
  ]
  $restart_on = $transcode_worker::restart_on_change ? {
    true  => [File[$unit_file]] + $shared_files,
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

  # The dashboard and ingest: a unit each; when off, stopped, disabled and
  # its unit file removed.
  $transcode_worker::commands.each |$name, $args| {
    $command_unit = "${program}-${name}"
    $command_file = "/etc/systemd/system/${command_unit}.service"
    if $args == undef {
      service { $command_unit:
        ensure => stopped,
        enable => false,
      }
      -> file { $command_file:
        ensure => absent,
      }
    } else {
      file { $command_file:
        ensure  => file,
        owner   => 'root',
        group   => 'root',
        mode    => '0644',
        content => epp('transcode_worker/command.service.epp', {
            'command'      => join([$transcode_worker::wrapper_path] + $args, ' '),
            'what'         => "transcode-worker ${name}",
            'user'         => $transcode_worker::user,
            'group'        => $transcode_worker::group,
            'directory'    => $transcode_worker::state_dir,
            'stop_timeout' => $transcode_worker::commands_stop_timeout,
        }),
      }
      $own_files = $name ? {
        'ingest' => [File[$transcode_worker::ingest_rules_file]],
        default  => [],
      }
      $command_restart_on = $transcode_worker::restart_on_change ? {
        true  => [File[$command_file]] + $shared_files + $own_files,
        false => [],
      }
      service { $command_unit:
        ensure    => running,
        enable    => true,
        require   => File[$command_file],
        subscribe => $command_restart_on,
      }
    }
  }
}

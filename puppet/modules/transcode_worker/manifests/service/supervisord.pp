# @summary Runs `worker_count` workers as one supervisord program
#   (`numprocs`), and restarts them gracefully when their settings change.
#
# @api private
class transcode_worker::service::supervisord {
  $program = $transcode_worker::program_name
  $program_file = "${transcode_worker::supervisor_conf_dir}/${program}.conf"
  $supervisorctl = $transcode_worker::supervisorctl

  file { $program_file:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('transcode_worker/supervisor.conf.epp', {
        'program'      => $program,
        'command'      => $transcode_worker::wrapper_path,
        'numprocs'     => $transcode_worker::worker_count,
        'user'         => $transcode_worker::user,
        'directory'    => $transcode_worker::state_dir,
        'stopwaitsecs' => $transcode_worker::effective_stop_timeout,
        'log_dir'      => $transcode_worker::log_dir,
    }),
  }

  if $transcode_worker::manage_supervisor {
    package { $transcode_worker::supervisor_package:
      ensure => installed,
      before => File[$program_file],
    }
    service { $transcode_worker::supervisor_service:
      ensure  => running,
      enable  => true,
      require => File[$program_file],
    }

    # A changed program section: supervisord rereads it and restarts the
    # program's processes (each one drains, as on any stop).
    exec { "supervisorctl update ${program}":
      command     => "${supervisorctl} update ${program}",
      refreshonly => true,
      subscribe   => File[$program_file],
      require     => Service[$transcode_worker::supervisor_service],
    }

    if $transcode_worker::restart_on_change {
      exec { "supervisorctl restart ${program}":
        command     => "${supervisorctl} restart '${program}:*'",
        refreshonly => true,
        subscribe   => [
          File[$transcode_worker::binary_path],
          File[$transcode_worker::config_file],
          File[$transcode_worker::env_file],
          File[$transcode_worker::wrapper_path],
        ],
        require     => Exec["supervisorctl update ${program}"],
      }
    }
  }
}

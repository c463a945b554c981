# @summary Runs `worker_count` workers as one supervisord program
#   (`numprocs`), the dashboard and ingest (when enabled) as one program of
#   one process each, and restarts them gracefully when their settings
#   change.
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
        'command'      => "${transcode_worker::wrapper_path} run",
        'numprocs'     => $transcode_worker::worker_count,
        'user'         => $transcode_worker::user,
        'directory'    => $transcode_worker::state_dir,
        'stopwaitsecs' => $transcode_worker::effective_stop_timeout,
        'log_dir'      => $transcode_worker::log_dir,
    }),
  }

  # What a restart follows, for every program.
  $shared_files = [
    File[$transcode_worker::binary_path],
    File[$transcode_worker::config_file],
    File[$transcode_worker::env_file],
    File[$transcode_worker::wrapper_path],
  ]

  # The dashboard and ingest: a program each, or no file (supervisorctl
  # update then stops and removes the program).
  $transcode_worker::commands.each |$name, $args| {
    $command_program = "${program}-${name}"
    $command_file = "${transcode_worker::supervisor_conf_dir}/${command_program}.conf"
    if $args == undef {
      file { $command_file:
        ensure => absent,
      }
    } else {
      file { $command_file:
        ensure  => file,
        owner   => 'root',
        group   => 'root',
        mode    => '0644',
        content => epp('transcode_worker/supervisor-command.conf.epp', {
            'program'      => $command_program,
            'command'      => join([$transcode_worker::wrapper_path] + $args, ' '),
            'what'         => "transcode-worker ${name}",
            'user'         => $transcode_worker::user,
            'directory'    => $transcode_worker::state_dir,
            'stopwaitsecs' => $transcode_worker::commands_stop_timeout,
            'log_dir'      => $transcode_worker::log_dir,
        }),
      }
    }

    if $transcode_worker::manage_supervisor {
      Package[$transcode_worker::supervisor_package] -> File[$command_file] -> Service[$transcode_worker::supervisor_service]

      exec { "supervisorctl update ${command_program}":
        command     => "${supervisorctl} update ${command_program}",
        refreshonly => true,
        subscribe   => File[$command_file],
        require     => Service[$transcode_worker::supervisor_service],
      }

      if $args != undef and $transcode_worker::restart_on_change {
        $own_files = $name ? {
          'ingest' => [File[$transcode_worker::ingest_rules_file]],
          default  => [],
        }
        exec { "supervisorctl restart ${command_program}":
          command     => "${supervisorctl} restart ${command_program}",
          refreshonly => true,
          subscribe   => $shared_files + $own_files,
          require     => Exec["supervisorctl update ${command_program}"],
        }
      }
    }
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
        subscribe   => $shared_files,
        require     => Exec["supervisorctl update ${program}"],
      }
    }
  }
}

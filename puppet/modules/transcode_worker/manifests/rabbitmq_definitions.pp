# @summary On the RabbitMQ host: the farm's queues and exchanges, loaded by
#   the broker at start, so jobs published before any worker ever ran are
#   kept.
#
# Writes the farm's definitions (the same file as
# config/rabbitmq-definitions/topology.json, made by `transcode-worker
# setup --definitions`) into `definitions_dir`, and a rabbitmq.conf snippet
# that makes the broker load that folder at start (`load_definitions`).
# The broker is not restarted here: the definitions are read at its next
# start (or run `rabbitmqctl import_definitions FILE` once).
#
# A broker that loads definitions at its first start makes no default
# user: give the users it must have in `users` (RabbitMQ password hashes,
# e.g. from `rabbitmqctl hash_password`), or manage them elsewhere.
#
# @example
#   class { 'transcode_worker::rabbitmq_definitions':
#     users => { 'farm' => { 'password_hash' => 'kI3GCrswBLNZ...', 'tags' => [] } },
#   }
#
# @param definitions_dir
#   Folder of definition files the broker loads at start.
# @param conf_file
#   The rabbitmq.conf snippet that names that folder.
# @param users
#   Users to define, by name: `password_hash` (SHA-256, RabbitMQ's format)
#   and optional `tags`; each gets all permissions on the virtual host `/`.
class transcode_worker::rabbitmq_definitions (
  Transcode_worker::Path $definitions_dir = '/etc/rabbitmq/definitions.d',
  Transcode_worker::Path $conf_file = '/etc/rabbitmq/conf.d/90-transcode-worker-definitions.conf',
  Hash[String[1], Struct[{ password_hash => String[1], Optional[tags] => Array[String] }]] $users = {},
) {
  file { $definitions_dir:
    ensure => directory,
    mode   => '0755',
  }
  file { "${definitions_dir}/topology.json":
    ensure  => file,
    mode    => '0644',
    content => file('transcode_worker/rabbitmq-definitions/topology.json'),
  }
  $users_file = "${definitions_dir}/users.json"
  if empty($users) {
    file { $users_file:
      ensure => absent,
    }
  } else {
    file { $users_file:
      ensure  => file,
      mode    => '0640',
      content => epp('transcode_worker/rabbitmq-users.json.epp', { 'users' => $users }),
    }
  }
  file { $conf_file:
    ensure  => file,
    mode    => '0644',
    content => "# Managed by Puppet (transcode_worker): the farm's queues and exchanges.\nload_definitions = ${definitions_dir}\n",
  }
}

# @summary Runs transcode-worker processes on a machine.
#
# Installs the GStreamer runtime plugins and the worker binary, writes the
# worker's configuration file (TOML) and a mode-0600 environment file (the
# broker URL and S3 credentials), and keeps `worker_count` worker processes
# running under supervisord (default) or systemd.
#
# Optionally also the farm's other long-running commands, each as one more
# process with the same binary, configuration file, environment file and
# user: the dashboard (`dashboard => true`; program or unit
# `<program_name>-dashboard`) and ingest, which turns new uploads into jobs
# by the rules of `ingest_rules` (program or unit `<program_name>-ingest`).
#
# Every parameter can come from Hiera (`transcode_worker::amqp_url: ...`);
# the module's own Hiera data turns `amqp_url`, `aws_secret_access_key` and
# `dashboard_token` into Sensitive values, so plain (or eyaml-encrypted)
# strings work there.
#
# On a stop (supervisorctl stop, systemctl stop, a configuration change) a
# worker takes no new job, lets its running job finish for up to
# `drain_timeout` seconds, then gives the job back to the queue and exits 0;
# another worker takes it. The process manager waits `stop_timeout` seconds
# before it kills the worker and its pipeline process.
#
# @example Four workers on a VM, settings from Hiera
#   include transcode_worker
#
# @example Declared with parameters
#   class { 'transcode_worker':
#     binary_source         => 'https://files.example.com/transcode-worker-0.1.0-x86_64',
#     binary_checksum       => 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
#     amqp_url              => Sensitive('amqp://farm:secret@rabbit.example.com:5672/%2f'),
#     s3_bucket             => 'videos',
#     s3_endpoint           => 'http://minio.example.com:9000',
#     aws_access_key_id     => 'farm',
#     aws_secret_access_key => Sensitive('secret'),
#     worker_count          => 4,
#   }
#
# @example A dashboard and ingest beside the workers (listing the bucket every 30 s)
#   class { 'transcode_worker':
#     binary_source    => 'https://files.example.com/transcode-worker-0.1.0-x86_64',
#     amqp_url         => Sensitive('amqp://farm:secret@rabbit.example.com:5672/%2f'),
#     s3_bucket        => 'videos',
#     dashboard        => true,
#     dashboard_listen => '0.0.0.0:3000',
#     dashboard_token  => Sensitive('a long random string'),
#     ingest_rules     => file('profile/transcode/ingest.toml'),
#     ingest_poll      => 30,
#   }
#
# @param binary_source
#   Where the worker binary (`cargo build --release`, target/release/transcode-worker)
#   comes from: an absolute path on the node, or a file://, puppet:// or http(s):// URL.
# @param amqp_url
#   RabbitMQ URL (AMQP_URL), e.g. amqp://user:pass@rabbit:5672/%2f.
# @param binary_checksum
#   SHA-256 of the binary; recommended with an http(s) source.
# @param storage_backend
#   `s3` (MinIO, Garage, AWS) or `directory` (a NAS or NFS mount).
# @param s3_bucket
#   Bucket holding inputs and outputs (S3_BUCKET_NAME).
# @param s3_endpoint
#   S3 endpoint URL for MinIO or Garage (AWS_S3_ENDPOINT_URL); unset for AWS.
# @param s3_region
#   S3 region (AWS_REGION).
# @param aws_access_key_id
#   S3 access key id (AWS_ACCESS_KEY_ID).
# @param aws_secret_access_key
#   S3 secret key (AWS_SECRET_ACCESS_KEY).
# @param storage_directory
#   Shared folder of the directory backend (storage.directory).
# @param worker_count
#   Worker processes on this machine.
# @param concurrency
#   Jobs each worker process runs at once (worker.concurrency).
# @param drain_timeout
#   Seconds a stopping worker lets its running job finish before giving it back (worker.drain_timeout).
# @param stop_timeout
#   Seconds the process manager waits for a stopping worker before killing it
#   (supervisord stopwaitsecs, systemd TimeoutStopSec); default drain_timeout + 30.
#   Must be above drain_timeout.
# @param job_timeout
#   Longest one attempt may run (worker.job_timeout), e.g. "12h". Keep RabbitMQ's
#   consumer_timeout above it.
# @param settings
#   More settings for the configuration file, by section, e.g.
#   `{ 'pipeline' => { 'default_preset' => 'h264-720p' } }`; they override the ones above.
# @param extra_env
#   More environment variables for the workers (written to the environment file).
# @param log_format
#   `pretty` or `json` (LOG_FORMAT).
# @param rust_log
#   Log filter (RUST_LOG).
# @param service_manager
#   `supervisord` or `systemd`.
# @param dashboard
#   Whether to run `transcode-worker dashboard` (the farm's live page and
#   JSON API): one process, supervisord program (or systemd unit)
#   `<program_name>-dashboard`. False removes it.
# @param dashboard_listen
#   IP:port the dashboard listens on (`--listen`); e.g. `0.0.0.0:3000` for
#   the network. It has no login: keep it on loopback or behind an
#   authenticating proxy where the farm's state is private.
# @param dashboard_token
#   The token the dashboard's actions (cancel, requeue, submit) need
#   (TRANSCODE_DASHBOARD__TOKEN, written to the environment file only);
#   unset, the dashboard is read-only.
# @param ingest_rules
#   Content of the rules file of `transcode-worker ingest` (TOML, see
#   config/ingest.toml), e.g. from `file()` or a Hiera multi-line string.
#   Given (or `ingest_rules_source`), the module writes it to
#   `<config_dir>/ingest.toml` and runs ingest as one process, supervisord
#   program (or systemd unit) `<program_name>-ingest`; neither removes both.
# @param ingest_rules_source
#   Where the rules file comes from instead (a `puppet:///` URL, a path on
#   the node, an http(s) URL); not together with `ingest_rules`.
# @param ingest_poll
#   Seconds between listings of the rules' prefixes (`ingest --poll`), for
#   storage without event notifications; unset, ingest consumes the S3
#   event notifications of the uploads queue.
# @param packages
#   The GStreamer runtime packages (kept equal to the Dockerfile's and
#   scripts/install-deps' by scripts/check-deploy).
# @param manage_packages
#   Whether to install `packages`.
# @param manage_user
#   Whether to create `user` and `group`.
# @param user
#   System user the workers run as.
# @param group
#   Group of that user.
# @param binary_path
#   Where the binary is installed.
# @param wrapper_path
#   The start script: loads the environment file, then runs the command it
#   is given (`run` for the workers, `dashboard ...`, `ingest ...`).
# @param config_dir
#   Folder of config.toml and the environment file.
# @param state_dir
#   The workers' home and working directory.
# @param scratch_dir
#   Where per-job scratch folders are made; needs room for an input and its output per job.
# @param log_dir
#   Folder of the supervisord log files.
# @param program_name
#   supervisord program name and systemd unit name.
# @param restart_on_change
#   Restart the workers (gracefully) when the binary or settings change.
# @param manage_supervisor
#   Whether to install and run supervisord itself and have it reread and
#   restart the program; false writes the program section only (for a
#   supervisord managed elsewhere).
# @param supervisor_package
#   Package of supervisord.
# @param supervisor_service
#   Service of supervisord.
# @param supervisor_conf_dir
#   Folder supervisord includes program sections from.
# @param supervisorctl
#   Path of supervisorctl.
class transcode_worker (
  String[1] $binary_source,
  Variant[String[1], Sensitive[String[1]]] $amqp_url,
  Optional[Pattern[/\A[0-9a-fA-F]{64}\z/]] $binary_checksum = undef,
  Enum['s3', 'directory'] $storage_backend = 's3',
  Optional[String[1]] $s3_bucket = undef,
  Optional[String[1]] $s3_endpoint = undef,
  String[1] $s3_region = 'us-east-1',
  Optional[String[1]] $aws_access_key_id = undef,
  Optional[Sensitive[String[1]]] $aws_secret_access_key = undef,
  Optional[Transcode_worker::Path] $storage_directory = undef,
  Integer[1] $worker_count = 1,
  Integer[1] $concurrency = 1,
  Integer[1] $drain_timeout = 30,
  Optional[Integer[1]] $stop_timeout = undef,
  String[1] $job_timeout = '12h',
  Hash[String[1], Hash[String[1], Transcode_worker::Setting]] $settings = {},
  Hash[Pattern[/\A[A-Za-z_][A-Za-z0-9_]*\z/], Variant[String, Sensitive[String]]] $extra_env = {},
  Enum['pretty', 'json'] $log_format = 'json',
  String[1] $rust_log = 'info',
  Enum['supervisord', 'systemd'] $service_manager = 'supervisord',
  Boolean $dashboard = false,
  Transcode_worker::Address $dashboard_listen = '127.0.0.1:3000',
  Optional[Sensitive[String[1]]] $dashboard_token = undef,
  Optional[String[1]] $ingest_rules = undef,
  Optional[String[1]] $ingest_rules_source = undef,
  Optional[Integer[1]] $ingest_poll = undef,
  Array[String[1]] $packages = [
    'gstreamer1.0-plugins-base',
    'gstreamer1.0-plugins-good',
    'gstreamer1.0-plugins-bad',
    'gstreamer1.0-plugins-ugly',
    'gstreamer1.0-libav',
  ],
  Boolean $manage_packages = true,
  Boolean $manage_user = true,
  String[1] $user = 'transcode',
  String[1] $group = 'transcode',
  Transcode_worker::Path $binary_path = '/usr/local/bin/transcode-worker',
  Transcode_worker::Path $wrapper_path = '/usr/local/libexec/transcode-worker-run',
  Transcode_worker::Path $config_dir = '/etc/transcode-worker',
  Transcode_worker::Path $state_dir = '/var/lib/transcode-worker',
  Transcode_worker::Path $scratch_dir = '/var/lib/transcode-worker/scratch',
  Transcode_worker::Path $log_dir = '/var/log/transcode-worker',
  Pattern[/\A[A-Za-z0-9_.-]+\z/] $program_name = 'transcode-worker',
  Boolean $restart_on_change = true,
  Boolean $manage_supervisor = true,
  String[1] $supervisor_package = 'supervisor',
  String[1] $supervisor_service = 'supervisor',
  Transcode_worker::Path $supervisor_conf_dir = '/etc/supervisor/conf.d',
  Transcode_worker::Path $supervisorctl = '/usr/bin/supervisorctl',
) {
  $effective_stop_timeout = $stop_timeout ? {
    undef   => $drain_timeout + 30,
    default => $stop_timeout,
  }
  if $effective_stop_timeout <= $drain_timeout {
    fail("transcode_worker: stop_timeout (${effective_stop_timeout}) must be above drain_timeout (${drain_timeout})")
  }
  if $storage_backend == 's3' and $s3_bucket == undef {
    fail('transcode_worker: s3_bucket is required with the s3 storage backend')
  }
  if $storage_backend == 'directory' and $storage_directory == undef {
    fail('transcode_worker: storage_directory is required with the directory storage backend')
  }

  if $ingest_rules != undef and $ingest_rules_source != undef {
    fail('transcode_worker: give ingest_rules or ingest_rules_source, not both')
  }
  $ingest = $ingest_rules != undef or $ingest_rules_source != undef

  $config_file = "${config_dir}/config.toml"
  $env_file = "${config_dir}/environment"
  $ingest_rules_file = "${config_dir}/ingest.toml"
  # Seconds the process manager waits for a stopping dashboard or ingest
  # (both stop by themselves on SIGTERM) before it kills it.
  $commands_stop_timeout = 30

  # The farm's other long-running commands: the start script's arguments for
  # each, by name (the program or unit is `<program_name>-<name>`); undef
  # when it does not run here.
  $poll_args = $ingest_poll ? {
    undef   => [],
    default => ['--poll', String($ingest_poll)],
  }
  $commands = {
    'dashboard' => $dashboard ? {
      true    => ['dashboard', '--listen', $dashboard_listen],
      default => undef,
    },
    'ingest'    => $ingest ? {
      true    => ['ingest', '--rules', $ingest_rules_file] + $poll_args,
      default => undef,
    },
  }

  contain transcode_worker::install
  contain transcode_worker::config
  contain transcode_worker::service

  Class['transcode_worker::install']
  -> Class['transcode_worker::config']
  -> Class['transcode_worker::service']
}

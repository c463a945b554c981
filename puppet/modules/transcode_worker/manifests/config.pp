# @summary Writes the worker's configuration file, its environment file
#   (mode 0600: it holds the broker password, the S3 secret key and the
#   dashboard's token), the start script that loads both, and ingest's
#   rules file.
#
# @api private
class transcode_worker::config {
  $amqp_url = $transcode_worker::amqp_url ? {
    Sensitive => $transcode_worker::amqp_url.unwrap,
    default   => $transcode_worker::amqp_url,
  }
  $secret_key = $transcode_worker::aws_secret_access_key ? {
    undef   => undef,
    default => $transcode_worker::aws_secret_access_key.unwrap,
  }
  # Only where the dashboard runs; the workers and ingest ignore it.
  $dashboard_token = ($transcode_worker::dashboard and $transcode_worker::dashboard_token != undef) ? {
    true    => $transcode_worker::dashboard_token.unwrap,
    default => undef,
  }
  $extra_env = $transcode_worker::extra_env.reduce({}) |$memo, $pair| {
    $value = $pair[1] ? {
      Sensitive => $pair[1].unwrap,
      default   => $pair[1],
    }
    $memo + { $pair[0] => $value }
  }
  # The original service's names (read last by the worker, so they win), then extra_env.
  $environment = {
    'AMQP_URL'                   => $amqp_url,
    'S3_BUCKET_NAME'             => $transcode_worker::s3_bucket,
    'AWS_S3_ENDPOINT_URL'        => $transcode_worker::s3_endpoint,
    'AWS_REGION'                 => $transcode_worker::s3_region,
    'AWS_ACCESS_KEY_ID'          => $transcode_worker::aws_access_key_id,
    'AWS_SECRET_ACCESS_KEY'      => $secret_key,
    'LOG_FORMAT'                 => $transcode_worker::log_format,
    'RUST_LOG'                   => $transcode_worker::rust_log,
    'TRANSCODE_DASHBOARD__TOKEN' => $dashboard_token,
  }.filter |$pair| { $pair[1] != undef } + $extra_env

  $storage = $transcode_worker::storage_directory ? {
    undef   => { 'backend' => $transcode_worker::storage_backend },
    default => { 'backend' => $transcode_worker::storage_backend, 'directory' => $transcode_worker::storage_directory },
  }
  $base = {
    'storage' => $storage,
    'worker'  => {
      'concurrency'   => $transcode_worker::concurrency,
      'drain_timeout' => "${transcode_worker::drain_timeout}s",
      'job_timeout'   => $transcode_worker::job_timeout,
      'scratch_dir'   => $transcode_worker::scratch_dir,
    },
  }
  $sections = ($base.keys + $transcode_worker::settings.keys).unique
  # Section names such as "presets.vhs" are TOML table names: index, not get() (which reads dots as a path).
  $settings = $sections.reduce({}) |$memo, $section| {
    $from_base = $base[$section] ? {
      undef   => {},
      default => $base[$section],
    }
    $from_param = $transcode_worker::settings[$section] ? {
      undef   => {},
      default => $transcode_worker::settings[$section],
    }
    $memo + { $section => $from_base + $from_param }
  }

  file { $transcode_worker::config_dir:
    ensure => directory,
    owner  => 'root',
    group  => $transcode_worker::group,
    mode   => '0750',
  }

  file { $transcode_worker::config_file:
    ensure  => file,
    owner   => 'root',
    group   => $transcode_worker::group,
    mode    => '0640',
    content => epp('transcode_worker/config.toml.epp', { 'settings' => $settings }),
  }

  file { $transcode_worker::env_file:
    ensure    => file,
    owner     => $transcode_worker::user,
    group     => $transcode_worker::group,
    mode      => '0600',
    show_diff => false,
    content   => Sensitive(epp('transcode_worker/environment.epp', { 'environment' => $environment })),
  }

  $wrapper_dir = regsubst($transcode_worker::wrapper_path, '/[^/]+\z', '')
  if !defined(File[$wrapper_dir]) {
    file { $wrapper_dir:
      ensure => directory,
      owner  => 'root',
      group  => 'root',
      mode   => '0755',
    }
  }
  file { $transcode_worker::wrapper_path:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0755',
    content => epp('transcode_worker/run.sh.epp', {
        'binary'      => $transcode_worker::binary_path,
        'config_file' => $transcode_worker::config_file,
        'env_file'    => $transcode_worker::env_file,
    }),
  }

  # ingest reads its rules at start: a change restarts it (service classes).
  if $transcode_worker::ingest {
    $rules = $transcode_worker::ingest_rules ? {
      undef   => { 'source' => $transcode_worker::ingest_rules_source },
      default => { 'content' => $transcode_worker::ingest_rules },
    }
    file { $transcode_worker::ingest_rules_file:
      ensure => file,
      owner  => 'root',
      group  => $transcode_worker::group,
      mode   => '0640',
      *      => $rules,
    }
  } else {
    file { $transcode_worker::ingest_rules_file:
      ensure => absent,
    }
  }
}

# @summary Installs the GStreamer runtime plugins, the worker's user and
#   folders, and the worker binary.
#
# @api private
class transcode_worker::install {
  if $transcode_worker::manage_packages {
    package { $transcode_worker::packages:
      ensure => installed,
    }
  }

  if $transcode_worker::manage_user {
    group { $transcode_worker::group:
      ensure => present,
      system => true,
    }
    user { $transcode_worker::user:
      ensure     => present,
      gid        => $transcode_worker::group,
      home       => $transcode_worker::state_dir,
      managehome => false,
      shell      => '/usr/sbin/nologin',
      system     => true,
      comment    => 'transcode-worker',
    }
  }

  file { [$transcode_worker::state_dir, $transcode_worker::scratch_dir, $transcode_worker::log_dir]:
    ensure => directory,
    owner  => $transcode_worker::user,
    group  => $transcode_worker::group,
    mode   => '0750',
  }

  $checksum = $transcode_worker::binary_checksum ? {
    undef   => {},
    default => { 'checksum' => 'sha256', 'checksum_value' => $transcode_worker::binary_checksum },
  }
  file { $transcode_worker::binary_path:
    ensure => file,
    source => $transcode_worker::binary_source,
    owner  => 'root',
    group  => 'root',
    mode   => '0755',
    *      => $checksum,
  }
}

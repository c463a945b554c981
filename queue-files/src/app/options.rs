//! The options of a run, checked against the settings before anything is
//! reached: target format, globs, preset or fragment, the folders to scan,
//! where inputs are (uploaded or in place), what the scan leaves out, and
//! the archive folder. Fixed for the whole run; a bad option is a usage
//! error here, before the storage or the broker is contacted.

use std::path::{Path, PathBuf};

use transcode_worker::config::{Backend, Settings};
use transcode_worker::fragment::Fragment;

use super::Fatal;
use crate::cli::Cli;
use crate::inspect::Target;
use crate::keys;
use crate::scan::Filter;

/// Default input prefix for uploads.
pub const DEFAULT_INPUT_PREFIX: &str = "input/";

/// Where inputs are.
#[derive(Debug, Clone)]
pub(super) enum Mode {
    /// Uploaded under a prefix; keys follow the path relative to the scanned folder.
    Upload { input_prefix: String },
    /// In place in the storage directory; keys are relative to it.
    InPlace { root: PathBuf },
}

/// What the command line and the settings decided, checked.
#[derive(Debug)]
pub(super) struct Options {
    /// The command line as parsed.
    pub cli: Cli,
    /// The worker's settings (with `--bucket` applied).
    pub settings: Settings,
    /// Where inputs are.
    pub mode: Mode,
    /// Prefix of the output keys, normalised.
    pub output_prefix: String,
    /// The format files are transcoded to (and skipped when already in).
    pub target: Target,
    /// `--include` and `--exclude`.
    pub filter: Filter,
    /// The folders and files to scan, canonical and without repeats.
    pub roots: Vec<PathBuf>,
    /// Folders the scan leaves out: the archive, and in place the outputs.
    pub prune: Vec<PathBuf>,
    /// The archive folder (created), unless a dry run.
    pub archive: Option<PathBuf>,
}

/// The keys of one file's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    /// Where the worker reads the input.
    pub input: String,
    /// Where the worker writes the output.
    pub output: String,
}

impl Options {
    /// Checks `cli` against `settings`; creates the archive folder.
    pub fn check(cli: Cli, settings: Settings) -> Result<Options, Fatal> {
        let target = Target::new(&cli.target_codec, &cli.target_ext).map_err(Fatal::usage)?;
        let filter = Filter::new(&cli.include, &cli.exclude).map_err(Fatal::usage)?;
        check_job_options(&cli, &settings)?;
        let roots = canonical_roots(&cli.paths)?;
        let mode = mode(&cli, &settings, &roots)?;
        let output_prefix = keys::normalize_prefix(&cli.output_prefix);
        let (archive, mut prune) = archive(&cli)?;
        if let Mode::InPlace { root } = &mode {
            if !output_prefix.is_empty() {
                let outputs = root.join(output_prefix.trim_end_matches('/'));
                prune.push(outputs.canonicalize().unwrap_or(outputs));
            }
        }
        Ok(Options {
            cli,
            settings,
            mode,
            output_prefix,
            target,
            filter,
            roots,
            prune,
            archive,
        })
    }

    /// Whether queued jobs are followed to their end (`--wait`, not a dry run).
    pub fn waits(&self) -> bool {
        self.cli.wait && !self.cli.dry_run
    }

    /// The input and output keys of the file at `path` (`rel` to its scanned folder).
    pub fn keys_for(&self, path: &Path, rel: &Path) -> Result<Keys, String> {
        let (input, base) = match &self.mode {
            Mode::Upload { input_prefix } => {
                let key = keys::rel_key(rel)?;
                (keys::prefixed(input_prefix, &key), key)
            }
            Mode::InPlace { root } => {
                let inside = path.strip_prefix(root).map_err(|_| {
                    format!("it is not inside the storage directory {}", root.display())
                })?;
                let key = keys::rel_key(inside)?;
                (key.clone(), key)
            }
        };
        let output = keys::with_extension(
            &keys::prefixed(&self.output_prefix, &base),
            &self.target.ext,
        );
        if output == input {
            return Err(format!(
                "its output key would be its own input key {input:?}; choose another --output-prefix"
            ));
        }
        Ok(Keys { input, output })
    }
}

/// `--preset` names a preset; `--transcode-options` is allowed and passes
/// the worker's allowlist.
fn check_job_options(cli: &Cli, settings: &Settings) -> Result<(), Fatal> {
    if let Some(name) = &cli.preset {
        settings
            .preset(name)
            .map_err(|e| Fatal::usage(format!("--preset: {e}")))?;
    }
    if let Some(fragment) = &cli.transcode_options {
        if !settings.pipeline.allow_transcode_options {
            return Err(Fatal::usage(
                "--transcode-options: the configuration accepts presets only (pipeline.allow_transcode_options = false)",
            ));
        }
        Fragment::parse(fragment, &settings.allowlist())
            .map_err(|e| Fatal::usage(format!("--transcode-options is refused: {}", e.message)))?;
    }
    Ok(())
}

/// The paths to scan, canonical, each once.
fn canonical_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Fatal> {
    let mut roots = Vec::new();
    for path in paths {
        let root = path
            .canonicalize()
            .map_err(|e| Fatal::usage(format!("{}: {e}", path.display())))?;
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    Ok(roots)
}

/// Upload under the input prefix (S3), or in place (directory backend,
/// where every scanned path must be inside the storage directory).
fn mode(cli: &Cli, settings: &Settings, roots: &[PathBuf]) -> Result<Mode, Fatal> {
    if settings.storage.backend == Backend::S3 {
        return Ok(Mode::Upload {
            input_prefix: keys::normalize_prefix(
                cli.input_prefix.as_deref().unwrap_or(DEFAULT_INPUT_PREFIX),
            ),
        });
    }
    if cli.input_prefix.is_some() {
        return Err(Fatal::usage(
            "--input-prefix has no use with the directory backend: files are queued in place",
        ));
    }
    if cli.bucket.is_some() {
        return Err(Fatal::usage(
            "--bucket has no use with the directory backend",
        ));
    }
    let directory = &settings.storage.directory;
    let root = directory.canonicalize().map_err(|e| {
        Fatal::usage(format!(
            "the storage directory {}: {e}",
            directory.display()
        ))
    })?;
    for scanned in roots {
        if !scanned.starts_with(&root) {
            return Err(Fatal::usage(format!(
                "{} is not inside the storage directory {}: with the directory backend files are queued in place, so they must be where the workers read",
                scanned.display(),
                root.display()
            )));
        }
    }
    if cli.archive.is_some() && !cli.wait && !cli.dry_run {
        return Err(Fatal::usage(
            "--archive with the directory backend needs --wait: the workers read the originals in place",
        ));
    }
    Ok(Mode::InPlace { root })
}

/// The archive folder, created and canonical (none in a dry run), and the
/// folders the scan leaves out because of it.
fn archive(cli: &Cli) -> Result<(Option<PathBuf>, Vec<PathBuf>), Fatal> {
    let Some(dir) = &cli.archive else {
        return Ok((None, Vec::new()));
    };
    if cli.dry_run {
        return Ok((None, dir.canonicalize().into_iter().collect()));
    }
    let refused = |e: std::io::Error| Fatal::usage(format!("--archive {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(refused)?;
    let dir = dir.canonicalize().map_err(refused)?;
    Ok((Some(dir.clone()), vec![dir]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn options(mode: Mode, output_prefix: &str) -> Options {
        let cli = Cli::try_parse_from(["queue-files", "d"]).unwrap();
        let env = [
            ("AMQP_URL", "amqp://localhost:5672/%2f"),
            ("S3_BUCKET_NAME", "videos"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Options {
            settings: Settings::from_env(None, &env).unwrap(),
            mode,
            output_prefix: output_prefix.to_string(),
            target: Target::new(&cli.target_codec, &cli.target_ext).unwrap(),
            filter: Filter::new(&[], &[]).unwrap(),
            roots: Vec::new(),
            prune: Vec::new(),
            archive: None,
            cli,
        }
    }

    #[test]
    fn uploaded_files_keep_their_path_under_both_prefixes() {
        let o = options(
            Mode::Upload {
                input_prefix: "input/".into(),
            },
            "output/",
        );
        let keys = o
            .keys_for(Path::new("/lib/2023/a b.wmv"), Path::new("2023/a b.wmv"))
            .unwrap();
        assert_eq!(keys.input, "input/2023/a b.wmv");
        assert_eq!(keys.output, "output/2023/a b.mp4");
    }

    #[test]
    fn files_in_place_are_keyed_from_the_storage_directory() {
        let o = options(
            Mode::InPlace {
                root: PathBuf::from("/store"),
            },
            "",
        );
        let keys = o
            .keys_for(Path::new("/store/in/x.avi"), Path::new("x.avi"))
            .unwrap();
        assert_eq!(keys.input, "in/x.avi");
        assert_eq!(keys.output, "in/x.mp4");
        let err = o
            .keys_for(Path::new("/store/in/x.mp4"), Path::new("x.mp4"))
            .unwrap_err();
        assert!(err.contains("its own input key"), "{err}");
        let err = o
            .keys_for(Path::new("/elsewhere/x.avi"), Path::new("x.avi"))
            .unwrap_err();
        assert!(err.contains("not inside the storage directory"), "{err}");
    }
}

//! Storage keys of a file: where its input is (uploaded under the input
//! prefix, or in place in the storage directory) and where its output goes
//! (the same relative path with the target extension, under the output
//! prefix).

use std::path::{Component, Path};

/// Turns a relative path into a key: its components joined with `/`.
/// Fails for names that are not UTF-8 (keys are text) and for paths that
/// are not plainly relative.
pub fn rel_key(rel: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| {
                format!(
                    "its name {:?} is not valid UTF-8, which storage keys must be",
                    part
                )
            })?),
            Component::CurDir => {}
            _ => return Err(format!("{} is not a relative path", rel.display())),
        }
    }
    if parts.is_empty() {
        return Err("it has no name".to_string());
    }
    Ok(parts.join("/"))
}

/// A key prefix in normal form: no leading `/`, one trailing `/` unless empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// `prefix` (normalized) followed by `key`.
pub fn prefixed(prefix: &str, key: &str) -> String {
    format!("{}{key}", normalize_prefix(prefix))
}

/// `key` with the extension of its last component replaced by `ext` (or
/// `ext` added when it has none).
pub fn with_extension(key: &str, ext: &str) -> String {
    let (dir, name) = match key.rfind('/') {
        Some(i) => (&key[..=i], &key[i + 1..]),
        None => ("", key),
    };
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    format!("{dir}{stem}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_relative_path() {
        assert_eq!(
            rel_key(Path::new("a b/c'd/$(x).wmv")).unwrap(),
            "a b/c'd/$(x).wmv"
        );
        assert_eq!(rel_key(Path::new("./-x.avi")).unwrap(), "-x.avi");
        assert!(rel_key(Path::new("../x")).is_err());
        assert!(rel_key(Path::new("")).is_err());
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(prefixed("input", "a/b.wmv"), "input/a/b.wmv");
        assert_eq!(prefixed("/input/", "a.wmv"), "input/a.wmv");
        assert_eq!(prefixed("", "a.wmv"), "a.wmv");
        assert_eq!(prefixed("/", "a.wmv"), "a.wmv");
    }

    #[test]
    fn extensions_are_replaced_in_the_last_component_only() {
        assert_eq!(with_extension("a.b/c.wmv", "mp4"), "a.b/c.mp4");
        assert_eq!(with_extension("a.b/c", "mp4"), "a.b/c.mp4");
        assert_eq!(with_extension("x.tar.avi", "mp4"), "x.tar.mp4");
        assert_eq!(with_extension("été/vidéo.MOV", "mp4"), "été/vidéo.mp4");
    }
}

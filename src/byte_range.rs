//! What a storage server's answer to a `GET` of a byte range of one
//! version of an object says: the bytes asked for follow, the whole object
//! follows (a server or proxy that ignores `Range`), the object is gone, or
//! it is another version than the one asked for (`If-Match` refused, a
//! shorter object, or another ETag on the answer, for servers that ignore
//! `If-Match`). Pure logic, for both readers of objects by ranges: a
//! part's range source (in the pipeline process) and downloads in parts
//! (storage); the requests are theirs.

/// What an answer to a range request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// HTTP 206 of the version asked for: the bytes asked for follow.
    Range,
    /// A success other than 206 (HTTP 200): the server ignores ranges and
    /// the whole object follows (not to be read as a range).
    Whole,
    /// HTTP 404: the object is gone.
    Gone,
    /// The object is another version than the one asked for; the reason,
    /// for messages.
    Changed(&'static str),
    /// Any other status: an error document follows.
    Failed,
}

/// What an answer of `status` with the `ETag` header `etag` says to a
/// range request for the version `expected` (an ETag, with or without its
/// quotes; `None`: any version).
pub fn answer(status: u16, etag: Option<&str>, expected: Option<&str>) -> RangeAnswer {
    match status {
        206 => {}
        404 => return RangeAnswer::Gone,
        412 => return RangeAnswer::Changed("HTTP 412"),
        416 => return RangeAnswer::Changed("it is shorter: HTTP 416"),
        200..=299 => return RangeAnswer::Whole,
        _ => return RangeAnswer::Failed,
    }
    let bare = |e: &str| {
        e.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    match (expected, etag) {
        (Some(expected), Some(etag)) if bare(etag) != bare(expected) => {
            RangeAnswer::Changed("another ETag")
        }
        _ => RangeAnswer::Range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_answer_of_the_version_asked_for_is_the_range() {
        assert_eq!(
            answer(206, Some("\"abc\""), Some("abc")),
            RangeAnswer::Range
        );
        assert_eq!(
            answer(206, Some("W/\"abc\""), Some("\"abc\"")),
            RangeAnswer::Range
        );
        // No version asked for, or none given back: nothing to compare.
        assert_eq!(answer(206, Some("\"abc\""), None), RangeAnswer::Range);
        assert_eq!(answer(206, None, Some("abc")), RangeAnswer::Range);
    }

    #[test]
    fn another_version_is_a_change_whichever_way_the_server_says_it() {
        assert_eq!(
            answer(206, Some("\"def\""), Some("abc")),
            RangeAnswer::Changed("another ETag")
        );
        assert_eq!(
            answer(412, None, Some("abc")),
            RangeAnswer::Changed("HTTP 412")
        );
        assert!(matches!(answer(416, None, None), RangeAnswer::Changed(_)));
    }

    #[test]
    fn a_whole_object_a_gone_one_and_errors_are_told_apart() {
        assert_eq!(
            answer(200, Some("\"abc\""), Some("abc")),
            RangeAnswer::Whole
        );
        assert_eq!(answer(404, None, Some("abc")), RangeAnswer::Gone);
        for status in [400, 403, 500, 503] {
            assert_eq!(answer(status, None, Some("abc")), RangeAnswer::Failed);
        }
    }
}

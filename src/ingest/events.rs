//! S3 event notifications, as MinIO's AMQP target and AWS send them: a
//! JSON object with a `Records` list, each record with an `eventName`
//! (`s3:ObjectCreated:Put`, `ObjectCreated:CompleteMultipartUpload`,
//! `s3:ObjectRemoved:Delete`, ...) and an `s3` part naming the bucket and
//! the object (`key`, `eTag`, `size`, and with MinIO `userMetadata`).
//!
//! Keys arrive URL-encoded as a query string is (`+` for a space, `%2F`
//! for a slash with MinIO); [`decode_key`] turns them back into keys.
//! This module only reads messages: it never talks to the broker or the
//! storage.

use serde_json::Value;

/// What one record of an event message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An object was created (or replaced).
    Created(Created),
    /// Any other event (a removal, a tag change, a restore...).
    Other {
        /// The event's name, e.g. `s3:ObjectRemoved:Delete`.
        event_name: String,
        /// The decoded key, when the record names one.
        key: Option<String>,
    },
}

/// An object created, as its event record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The event's name, e.g. `s3:ObjectCreated:Put`.
    pub event_name: String,
    /// The bucket it is in.
    pub bucket: String,
    /// Its key, decoded.
    pub key: String,
    /// Its ETag without quotes, when the record gives one.
    pub etag: Option<String>,
    /// Its size in bytes, when the record gives it.
    pub size: Option<u64>,
    /// The `transcode-job-id` of its user metadata, when the record lists
    /// the metadata (MinIO does) and it carries one: the farm wrote it.
    pub made_by_job: Option<String>,
}

/// The records of one event message, each read or refused on its own:
/// one unreadable record does not hide the others.
pub type Records = Vec<Result<Record, String>>;

/// Reads one event message. The message as a whole is refused (with the
/// reason) when it is not a JSON object with a `Records` list; S3's test
/// event (`"Event": "s3:TestEvent"`, sent when notifications are set up)
/// has no records and is read as an empty list.
pub fn parse(body: &[u8]) -> Result<Records, String> {
    let text =
        std::str::from_utf8(body).map_err(|e| format!("the message is not UTF-8 text: {e}"))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the message is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("the message is not a JSON object with a Records list".into());
    };
    match object.get("Records") {
        Some(Value::Array(records)) => Ok(records.iter().map(record).collect()),
        Some(_) => Err("Records is not a list".into()),
        None if object.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") => {
            Ok(Vec::new())
        }
        None => Err("the message has no Records list (it is not an S3 event notification)".into()),
    }
}

/// Whether `event_name` says an object was created: `s3:ObjectCreated:*`
/// (MinIO, AWS's own spelling in configurations) or `ObjectCreated:*`
/// (AWS's records).
pub fn is_created(event_name: &str) -> bool {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    name.starts_with("ObjectCreated:")
}

/// Decodes a key as S3 events encode it: `+` is a space, `%XX` a byte;
/// the bytes must be UTF-8.
pub fn decode_key(encoded: &str) -> Result<String, String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| format!("the key {encoded:?} is not UTF-8 once decoded"))
}

/// Reads one record.
fn record(value: &Value) -> Result<Record, String> {
    let event_name = value
        .get("eventName")
        .and_then(Value::as_str)
        .ok_or("it has no eventName")?;
    let s3 = value.get("s3");
    let object = s3.and_then(|s| s.get("object"));
    let raw_key = object.and_then(|o| o.get("key"));
    if !is_created(event_name) {
        let key = raw_key
            .and_then(Value::as_str)
            .and_then(|k| decode_key(k).ok());
        return Ok(Record::Other {
            event_name: event_name.to_string(),
            key,
        });
    }
    let bucket = s3
        .and_then(|s| s.get("bucket"))
        .and_then(|b| b.get("name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| format!("{event_name} without s3.bucket.name"))?;
    let raw_key = raw_key
        .and_then(Value::as_str)
        .filter(|key| !key.is_empty())
        .ok_or_else(|| format!("{event_name} without s3.object.key"))?;
    let key = decode_key(raw_key)?;
    let object = object.expect("an object with a key");
    let etag = match object.get("eTag") {
        None | Some(Value::Null) => None,
        Some(Value::String(etag)) => crate::storage::bare_etag(etag),
        Some(_) => return Err(format!("s3.object.eTag of {key:?} is not a text")),
    };
    let size = match object.get("size") {
        None | Some(Value::Null) => None,
        Some(size) => Some(
            size.as_u64()
                .ok_or_else(|| format!("s3.object.size of {key:?} is not a whole number"))?,
        ),
    };
    let made_by_job = object
        .get("userMetadata")
        .and_then(Value::as_object)
        .and_then(|metadata| {
            metadata.iter().find_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                (name == super::META_JOB_ID || name.ends_with(&format!("-{}", super::META_JOB_ID)))
                    .then(|| value.as_str().unwrap_or_default().to_string())
            })
        });
    Ok(Record::Created(Created {
        event_name: event_name.to_string(),
        bucket: bucket.to_string(),
        key,
        etag,
        size,
        made_by_job,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as MinIO's AMQP target publishes it (the shape of MinIO's
    /// `event.Log`): the key of the record is URL-encoded with `+` for a
    /// space and `%2F` for each slash.
    const MINIO: &str = r#"{"EventName":"s3:ObjectCreated:Put","Key":"videos/uploads/a b.mov","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"","eventTime":"2025-05-02T09:27:27.125Z","eventName":"s3:ObjectCreated:Put","userIdentity":{"principalId":"transcode"},"requestParameters":{"principalId":"transcode","region":"","sourceIPAddress":"172.18.0.1"},"responseElements":{"x-amz-id-2":"dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8","x-amz-request-id":"183B9E4D5A6C0F12","x-minio-deployment-id":"0170a4cc-dca6-4e72-86f1-c0cc760dff7f","x-minio-origin-endpoint":"http://172.18.0.3:9000"},"s3":{"s3SchemaVersion":"1.0","configurationId":"Config","bucket":{"name":"videos","ownerIdentity":{"principalId":"transcode"},"arn":"arn:aws:s3:::videos"},"object":{"key":"uploads%2Fa+b.mov","size":1048576,"eTag":"5fc7298143efe1276d39a3466d4e255f","contentType":"video/quicktime","userMetadata":{"content-type":"video/quicktime"},"sequencer":"183B9E4D5B2D8C41"}},"source":{"host":"172.18.0.1","port":"","userAgent":"MinIO (linux; amd64) minio-go/v7.0.90 mc/RELEASE.2025-04-16T18-13-26Z"}}]}"#;

    #[test]
    fn reads_a_minio_record() {
        let records = parse(MINIO.as_bytes()).unwrap();
        assert_eq!(
            records,
            [Ok(Record::Created(Created {
                event_name: "s3:ObjectCreated:Put".into(),
                bucket: "videos".into(),
                key: "uploads/a b.mov".into(),
                etag: Some("5fc7298143efe1276d39a3466d4e255f".into()),
                size: Some(1048576),
                made_by_job: None,
            }))]
        );
    }

    #[test]
    fn reads_several_aws_records_and_tells_removals_apart() {
        let body = r#"{"Records":[
            {"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:CompleteMultipartUpload",
             "s3":{"bucket":{"name":"videos"},"object":{"key":"uploads/big+file%28final%29.mov","size":5368709120,"eTag":"\"d41d8cd98f00b204e9800998ecf8427e-640\""}}},
            {"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectRemoved:Delete",
             "s3":{"bucket":{"name":"videos"},"object":{"key":"uploads/old.mov"}}},
            {"eventName":"s3:ObjectCreated:Copy","s3":{"bucket":{"name":"videos"},"object":{"key":"a%2Bb.mov"}}}
        ]}"#;
        let records = parse(body.as_bytes()).unwrap();
        let Ok(Record::Created(first)) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!(first.key, "uploads/big file(final).mov");
        assert_eq!(
            first.etag.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e-640")
        );
        assert_eq!(first.size, Some(5368709120));
        assert_eq!(
            records[1],
            Ok(Record::Other {
                event_name: "ObjectRemoved:Delete".into(),
                key: Some("uploads/old.mov".into())
            })
        );
        let Ok(Record::Created(third)) = &records[2] else {
            panic!("{records:?}")
        };
        assert_eq!(third.key, "a+b.mov");
        assert_eq!((third.etag.as_deref(), third.size), (None, None));
    }

    #[test]
    fn the_farms_own_objects_are_recognised_by_their_metadata() {
        let body = r#"{"Records":[{"eventName":"s3:ObjectCreated:CompleteMultipartUpload","s3":{"bucket":{"name":"videos"},
            "object":{"key":"renditions%2F720p%2Fa+b.mp4","userMetadata":{"X-Amz-Meta-Transcode-Job-Id":"ingest-0123","content-type":"video/mp4"}}}}]}"#;
        let Ok(Record::Created(created)) = &parse(body.as_bytes()).unwrap()[0] else {
            panic!()
        };
        assert_eq!(created.key, "renditions/720p/a b.mp4");
        assert_eq!(created.made_by_job.as_deref(), Some("ingest-0123"));
    }

    #[test]
    fn event_names_of_every_spelling() {
        for name in [
            "s3:ObjectCreated:Put",
            "s3:ObjectCreated:Post",
            "s3:ObjectCreated:Copy",
            "s3:ObjectCreated:CompleteMultipartUpload",
            "s3:ObjectCreated:PutRetention",
            "ObjectCreated:Put",
            "ObjectCreated:CompleteMultipartUpload",
        ] {
            assert!(is_created(name), "{name}");
        }
        for name in [
            "s3:ObjectRemoved:Delete",
            "ObjectRemoved:DeleteMarkerCreated",
            "s3:ObjectAccessed:Get",
            "s3:ObjectCreated",
            "ObjectCreatedPut",
            "",
        ] {
            assert!(!is_created(name), "{name}");
        }
    }

    #[test]
    fn keys_are_decoded_as_s3_encodes_them() {
        assert_eq!(decode_key("uploads%2Fa+b.mov").unwrap(), "uploads/a b.mov");
        assert_eq!(decode_key("uploads/a%20b.mov").unwrap(), "uploads/a b.mov");
        assert_eq!(decode_key("a%2Bb").unwrap(), "a+b");
        assert_eq!(decode_key("caf%C3%A9.mov").unwrap(), "café.mov");
        assert_eq!(decode_key("100%25.mov").unwrap(), "100%.mov");
        // A stray percent sign is kept as it is.
        assert_eq!(decode_key("100%.mov").unwrap(), "100%.mov");
        assert!(decode_key("bad%FF.mov").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn malformed_messages_and_records_say_why() {
        assert!(parse(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(parse(b"[1,2]").unwrap_err().contains("JSON object"));
        assert!(parse(br#"{"records":[]}"#)
            .unwrap_err()
            .contains("no Records"));
        assert!(parse(br#"{"Records":{}}"#)
            .unwrap_err()
            .contains("not a list"));
        assert_eq!(
            parse(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2025-05-02T09:27:27.125Z","Bucket":"videos"}"#)
                .unwrap(),
            []
        );
        let records = parse(
            br#"{"Records":[
                {"s3":{}},
                {"eventName":"s3:ObjectCreated:Put","s3":{"object":{"key":"a.mov"}}},
                {"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"videos"},"object":{}}},
                {"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"videos"},"object":{"key":"a.mov","size":-1}}},
                {"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"videos"},"object":{"key":"a%FF.mov"}}},
                "text"
            ]}"#,
        )
        .unwrap();
        let reasons: Vec<String> = records.into_iter().map(|r| r.unwrap_err()).collect();
        assert!(reasons[0].contains("no eventName"), "{reasons:?}");
        assert!(reasons[1].contains("s3.bucket.name"), "{reasons:?}");
        assert!(reasons[2].contains("s3.object.key"), "{reasons:?}");
        assert!(reasons[3].contains("size"), "{reasons:?}");
        assert!(reasons[4].contains("UTF-8"), "{reasons:?}");
        assert!(reasons[5].contains("no eventName"), "{reasons:?}");
    }
}

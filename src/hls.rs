//! HLS playlists as text: reading the media playlists `hlssink2` writes,
//! writing them again as VOD playlists, writing the master playlist, and
//! the figures a master playlist gives of each variant (`BANDWIDTH`,
//! `CODECS`). Pure functions; the package itself is made and checked by
//! [`crate::pipeline`].
//!
//! A package is laid out as
//!
//! ```text
//! videos/x/master.m3u8          the key the job names
//! videos/x/720p/index.m3u8      one media playlist per variant
//! videos/x/720p/seg00000.ts     its segments (MPEG-TS, H.264 + AAC)
//! ```
//!
//! with URIs relative to the playlist that names them, so the package can
//! be served from anywhere.

use std::fmt::Write as _;

/// File name of each variant's media playlist.
pub const VARIANT_PLAYLIST: &str = "index.m3u8";
/// Segment file names, as `hlssink2`'s `location` pattern.
pub const SEGMENT_PATTERN: &str = "seg%05d.ts";

/// One segment of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// Its duration in seconds (`#EXTINF`).
    pub duration: f64,
}

/// Reads a media playlist: its segments, in order. Refuses a playlist
/// without `#EXTM3U`, without segments, or not ended (`#EXT-X-ENDLIST`).
pub fn parse_media_playlist(text: &str) -> Result<Vec<Segment>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("#EXTM3U") {
        return Err("it does not start with #EXTM3U".into());
    }
    let mut segments = Vec::new();
    let mut duration: Option<f64> = None;
    let mut ended = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            let number = rest.split(',').next().unwrap_or_default().trim();
            let secs: f64 = number
                .parse()
                .map_err(|_| format!("{line:?} has no duration"))?;
            duration = Some(secs);
        } else if line == "#EXT-X-ENDLIST" {
            ended = true;
        } else if !line.starts_with('#') {
            let Some(secs) = duration.take() else {
                return Err(format!("the segment {line:?} has no #EXTINF"));
            };
            segments.push(Segment {
                uri: line.to_string(),
                duration: secs,
            });
        }
    }
    if segments.is_empty() {
        return Err("it lists no segment".into());
    }
    if !ended {
        return Err("it does not end with #EXT-X-ENDLIST".into());
    }
    Ok(segments)
}

/// A complete VOD media playlist of `segments`: `#EXT-X-PLAYLIST-TYPE:VOD`,
/// a target duration no shorter than any segment (rounded, as the
/// specification asks), and `#EXT-X-ENDLIST`.
pub fn vod_playlist(segments: &[Segment]) -> String {
    let target = segments
        .iter()
        .map(|s| s.duration.round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
    );
    for s in segments {
        let _ = write!(text, "#EXTINF:{:.3},\n{}\n", s.duration, s.uri);
    }
    text.push_str("#EXT-X-ENDLIST\n");
    text
}

/// What the master playlist says of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantEntry {
    /// Its media playlist, relative to the master, e.g. `720p/index.m3u8`.
    pub uri: String,
    /// Peak bit rate of its segments, bits per second.
    pub bandwidth: u64,
    /// Average bit rate over the whole variant, bits per second.
    pub average_bandwidth: u64,
    /// Frame size in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// RFC 6381 codec names, e.g. `avc1.64001f`, `mp4a.40.2`.
    pub codecs: Vec<String>,
    /// Frames per second, when known.
    pub frame_rate: Option<f64>,
}

/// The master playlist of `variants`, listed with the highest bandwidth
/// first.
pub fn master_playlist(variants: &[VariantEntry]) -> String {
    let mut sorted: Vec<&VariantEntry> = variants.iter().collect();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in sorted {
        let _ = write!(
            text,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{}",
            v.bandwidth, v.average_bandwidth, v.width, v.height
        );
        if !v.codecs.is_empty() {
            let _ = write!(text, ",CODECS=\"{}\"", v.codecs.join(","));
        }
        if let Some(rate) = v.frame_rate.filter(|r| *r > 0.0) {
            let _ = write!(text, ",FRAME-RATE={rate:.3}");
        }
        let _ = write!(text, "\n{}\n", v.uri);
    }
    text
}

/// Peak and average bit rates of segments given as (seconds, bytes). The
/// peak leaves out a last segment shorter than half of the longest (its
/// key frame alone would make it look like a burst), unless it is the
/// only one.
pub fn bandwidths(segments: &[(f64, u64)]) -> (u64, u64) {
    let rate = |secs: f64, bytes: u64| {
        if secs > 0.0 {
            (bytes as f64 * 8.0 / secs).ceil() as u64
        } else {
            0
        }
    };
    let longest = segments.iter().map(|s| s.0).fold(0.0, f64::max);
    let peak = segments
        .iter()
        .enumerate()
        .filter(|(i, s)| segments.len() == 1 || *i + 1 < segments.len() || s.0 >= longest / 2.0)
        .map(|(_, s)| rate(s.0, s.1))
        .max()
        .unwrap_or(0);
    let secs: f64 = segments.iter().map(|s| s.0).sum();
    let bytes: u64 = segments.iter().map(|s| s.1).sum();
    (peak, rate(secs, bytes))
}

/// The RFC 6381 name of an H.264 stream (`avc1.PPCCLL`: profile,
/// constraint flags and level of its sequence parameter set), from an
/// `avcC` record or from Annex B bytes holding the SPS.
pub fn avc1_codec(bytes: &[u8]) -> Option<String> {
    let sps = if bytes.first() == Some(&1) && bytes.len() >= 4 {
        // avcC: version 1, then profile, compatibility, level.
        &bytes[1..4]
    } else {
        let at = (0..bytes.len().saturating_sub(4)).find(|&i| {
            bytes[i..i + 3] == [0, 0, 1] && bytes[i + 3] & 0x1f == 7 && i + 7 <= bytes.len()
        })?;
        &bytes[at + 4..at + 7]
    };
    Some(format!("avc1.{:02x}{:02x}{:02x}", sps[0], sps[1], sps[2]))
}

/// The RFC 6381 name of an AAC stream: `mp4a.40.N`, N the audio object
/// type of its `AudioSpecificConfig` (2, AAC-LC, when none is given).
pub fn aac_codec(config: Option<&[u8]>) -> String {
    let object_type = config
        .and_then(|c| c.first())
        .map(|b| b >> 3)
        .filter(|t| *t > 0)
        .unwrap_or(2);
    format!("mp4a.40.{object_type}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `hlssink2` of GStreamer 1.22 writes.
    const HLSSINK2: &str =
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:2\n\n\
        #EXTINF:2,\nseg00000.ts\n#EXTINF:1.9600000381469727,\nseg00001.ts\n#EXT-X-ENDLIST\n";

    #[test]
    fn reads_hlssink2_playlists_and_writes_them_as_vod() {
        let segments = parse_media_playlist(HLSSINK2).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0].uri, "seg00000.ts");
        assert!((segments[1].duration - 1.96).abs() < 1e-6);
        let vod = vod_playlist(&segments);
        assert_eq!(
            vod,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXTINF:2.000,\nseg00000.ts\n#EXTINF:1.960,\nseg00001.ts\n#EXT-X-ENDLIST\n"
        );
        let again = parse_media_playlist(&vod).unwrap();
        assert_eq!(again[1].uri, "seg00001.ts");
        assert_eq!(again[1].duration, 1.96);
    }

    #[test]
    fn refuses_broken_playlists() {
        assert!(parse_media_playlist("seg.ts\n")
            .unwrap_err()
            .contains("#EXTM3U"));
        assert!(parse_media_playlist("#EXTM3U\n#EXT-X-ENDLIST\n")
            .unwrap_err()
            .contains("no segment"));
        assert!(parse_media_playlist("#EXTM3U\n#EXTINF:2,\na.ts\n")
            .unwrap_err()
            .contains("ENDLIST"));
        assert!(parse_media_playlist("#EXTM3U\na.ts\n#EXT-X-ENDLIST\n")
            .unwrap_err()
            .contains("no #EXTINF"));
    }

    #[test]
    fn the_master_playlist_lists_every_variant_highest_first() {
        let entry = |name: &str, bandwidth: u64, height: u32| VariantEntry {
            uri: format!("{name}/index.m3u8"),
            bandwidth,
            average_bandwidth: bandwidth / 2,
            width: height * 16 / 9,
            height,
            codecs: vec!["avc1.64001f".into(), "mp4a.40.2".into()],
            frame_rate: Some(25.0),
        };
        let text = master_playlist(&[entry("360p", 800_000, 360), entry("720p", 2_400_000, 720)]);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2400000,AVERAGE-BANDWIDTH=1200000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\",FRAME-RATE=25.000\n720p/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=400000,RESOLUTION=640x360,CODECS=\"avc1.64001f,mp4a.40.2\",FRAME-RATE=25.000\n360p/index.m3u8\n"
        );
    }

    #[test]
    fn bandwidths_are_the_peak_segment_and_the_average() {
        // 6 s of 750 kB, 6 s of 1.5 MB, and a 0.5 s tail of 200 kB.
        let (peak, average) = bandwidths(&[(6.0, 750_000), (6.0, 1_500_000), (0.5, 200_000)]);
        assert_eq!(peak, 2_000_000);
        assert_eq!(average, 1_568_000);
        assert_eq!(bandwidths(&[(0.5, 200_000)]).0, 3_200_000);
    }

    #[test]
    fn codec_names_come_from_the_stream_itself() {
        // Annex B: start code, SPS NAL (0x67), High profile 100, level 3.1.
        let annex_b = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac,
        ];
        assert_eq!(avc1_codec(&annex_b).as_deref(), Some("avc1.64001f"));
        // avcC: constrained baseline 66 with flags 0xc0, level 3.0.
        let avcc = [1, 0x42, 0xc0, 0x1e, 0xff, 0xe1];
        assert_eq!(avc1_codec(&avcc).as_deref(), Some("avc1.42c01e"));
        assert_eq!(avc1_codec(&[0, 0, 1, 0x65, 1, 2, 3, 4]), None);
        // AudioSpecificConfig of AAC-LC, 44.1 kHz stereo; HE-AAC.
        assert_eq!(aac_codec(Some(&[0x12, 0x10])), "mp4a.40.2");
        assert_eq!(aac_codec(Some(&[0x2b, 0x92])), "mp4a.40.5");
        assert_eq!(aac_codec(None), "mp4a.40.2");
    }
}

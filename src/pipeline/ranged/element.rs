//! The range source as a GStreamer element: a `BaseSrc` in bytes, random
//! access, answering each `fill` from its [`Reader`].

use std::sync::Mutex;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::subclass::prelude::*;
use gstreamer_base as gst_base;
use gstreamer_base::prelude::*;
use gstreamer_base::subclass::prelude::*;

use super::Reader;

/// The element's instance: its reader, set once by [`super::source`].
#[derive(Default)]
pub struct RangeSrc {
    pub(super) reader: Mutex<Option<Reader>>,
}

#[glib::object_subclass]
impl ObjectSubclass for RangeSrc {
    const NAME: &'static str = "TranscodeWorkerRangeSrc";
    type Type = super::RangeSrc;
    type ParentType = gst_base::BaseSrc;
}

impl ObjectImpl for RangeSrc {
    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_format(gst::Format::Bytes);
    }
}

impl GstObjectImpl for RangeSrc {}

impl ElementImpl for RangeSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: std::sync::LazyLock<gst::subclass::ElementMetadata> =
            std::sync::LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "Storage range source",
                    "Source/Network",
                    "Reads an input from S3 by byte ranges, keeping the blocks it fetched",
                    "transcode-worker",
                )
            });
        Some(&METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
            std::sync::LazyLock::new(|| {
                vec![gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .expect("a valid template")]
            });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for RangeSrc {
    fn is_seekable(&self) -> bool {
        true
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(reader) = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            reader.finish();
        }
        Ok(())
    }

    fn size(&self) -> Option<u64> {
        self.reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.fetcher.ranged.size)
    }

    fn fill(
        &self,
        offset: u64,
        length: u32,
        buffer: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let Some(reader) = reader.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::Failed, ["no input set"]);
            return Err(gst::FlowError::Error);
        };
        if offset >= reader.fetcher.ranged.size {
            return Err(gst::FlowError::Eos);
        }
        let read = {
            let mut map = buffer.map_writable().map_err(|_| {
                gst::element_imp_error!(self, gst::CoreError::Failed, ["cannot map a buffer"]);
                gst::FlowError::Error
            })?;
            let want = (length as usize).min(map.len());
            reader.read_at(offset, &mut map[..want])
        };
        match read {
            Ok(n) => {
                buffer.set_size(n);
                Ok(gst::FlowSuccess::Ok)
            }
            Err(e) => {
                let kind = if e.gone {
                    gst::ResourceError::NotFound
                } else {
                    gst::ResourceError::Read
                };
                gst::element_imp_error!(
                    self,
                    kind,
                    ("reading the input from storage: {}", e.message)
                );
                Err(gst::FlowError::Error)
            }
        }
    }
}

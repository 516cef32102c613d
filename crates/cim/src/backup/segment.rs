//! Objects of a backup: lines of `row_to_json` text, zstd-compressed, named by their BLAKE3.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

/// zstd's default level: most of the size win at a fraction of the higher levels' time.
const LEVEL: i32 = 3;

/// Compressed lines and their checksum.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub blake3: String,
}

pub(crate) fn encode<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Encoded, String> {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let bytes = zstd::encode_all(text.as_bytes(), LEVEL).map_err(|e| format!("compressing: {e}"))?;
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    Ok(Encoded { bytes, blake3 })
}

/// Whether a put wrote the object or found it already there, identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    Written,
    Skipped,
}

/// Writes `encoded` at `key` unless an identical object is there (a backup resumed after an
/// interruption): the existing object is read back and its checksum compared, so a segment
/// half-written or damaged is written again rather than trusted.
pub(crate) async fn put_checked(store: &dyn ObjectStore, key: &str, encoded: Encoded) -> Result<Put, String> {
    let path = Path::from(key);
    match store.get(&path).await {
        Ok(existing) => {
            let existing = existing.bytes().await.map_err(|e| format!("reading {key}: {e}"))?;
            if blake3::hash(&existing).to_hex().as_str() == encoded.blake3 {
                return Ok(Put::Skipped);
            }
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(format!("reading {key}: {e}")),
    }
    store.put(&path, encoded.bytes.into()).await.map_err(|e| format!("writing {key}: {e}"))?;
    Ok(Put::Written)
}

/// Reads the object at `key` and checks it against the manifest's size and checksum; returns its
/// lines. Every refusal names the object.
pub(crate) async fn fetch_checked(
    store: &dyn ObjectStore,
    key: &str,
    bytes: u64,
    blake3: &str,
) -> Result<Vec<String>, String> {
    let data = match store.get(&Path::from(key)).await {
        Ok(got) => got.bytes().await.map_err(|e| format!("segment {key}: {e}"))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(format!("segment {key} is missing: the backup is incomplete"));
        }
        Err(e) => return Err(format!("segment {key}: {e}")),
    };
    if data.len() as u64 != bytes {
        return Err(format!(
            "segment {key} is truncated or corrupted: {} bytes, the manifest says {bytes}",
            data.len()
        ));
    }
    let sum = blake3::hash(&data).to_hex();
    if sum.as_str() != blake3 {
        return Err(format!("segment {key} is corrupted: BLAKE3 {sum}, the manifest says {blake3}"));
    }
    let text = zstd::decode_all(&data[..]).map_err(|e| format!("segment {key} does not decompress: {e}"))?;
    let text = String::from_utf8(text).map_err(|e| format!("segment {key} is not UTF-8: {e}"))?;
    Ok(text.lines().map(str::to_owned).collect())
}

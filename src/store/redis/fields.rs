//! What Redis answers, read at this backend's edge: its errors as the store's, the fields of a
//! callback's hash the scripts return as the stored shape, and the few values scripts and
//! `INFO` give as text.

use bytes::Bytes;
use redis::{RedisError, Value};

use crate::store::shape::{Stored, read_headers};
use crate::store::{Replay, StoreError};

/// Redis's errors, at this backend's edge: by what a caller can do about them, with the
/// client's own text (`Connection refused (os error 111)`, `OOM command not allowed …`) as
/// the message.
impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> StoreError {
        use redis::{ErrorKind, ServerErrorKind};
        // A transaction the server refused whole (`EXECABORT`, as an accept's at `maxmemory`):
        // read as what its first refused command was told.
        if e.kind() == ErrorKind::Server(ServerErrorKind::ExecAbort)
            && let Some(first) = e
                .clone()
                .into_server_errors()
                .and_then(|errors| errors.first().map(|(_, error)| error.clone()))
        {
            return StoreError::from(RedisError::from(first));
        }
        let message = e.to_string();
        if e.is_timeout() {
            return StoreError::Timeout(message);
        }
        // At `maxmemory` with `noeviction`: the server's code, inside a script too.
        if e.code() == Some("OOM") || message.contains("OOM command not allowed") {
            return StoreError::Full(message);
        }
        match e.kind() {
            ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::NoValidReplicasFoundBySentinel
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => StoreError::Unavailable(message),
            ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::EmptySentinelList
            | ErrorKind::RESP3NotSupported
            | ErrorKind::Server(ServerErrorKind::NoPerm) => StoreError::Refused(message),
            _ => StoreError::Unexpected(message),
        }
    }
}

impl Replay {
    /// With the lane of the callback's hash (`lane`), where the script returns it.
    pub(super) fn in_lane(mut self, lane: Option<Vec<u8>>) -> Replay {
        self.lane = lane.map(text);
        self
    }

    /// With the trace context and the replayed headers of the callback's hash (`trace`,
    /// `headers`), where the script returns them.
    pub(super) fn traced(mut self, trace: Option<Vec<u8>>, headers: Option<Vec<u8>>) -> Replay {
        self.trace = trace.map(text);
        self.headers = headers.map(|h| read_headers(&text(h))).unwrap_or_default();
        self
    }
}

/// A callback's shape from the fields of its hash the scripts return (`query`, `ctype`,
/// `body`, `authorizer`, `v`), as every version of it is read.
pub(super) fn shape(
    query: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    authorizer: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
) -> Replay {
    Stored {
        version: version.and_then(|v| number(Some(v)).ok()),
        query: text(query.unwrap_or_default()),
        authorizer: authorizer.map(text),
        content_type: content_type.map(text),
        body: Bytes::from(body.unwrap_or_default()),
        trace: None,
        headers: None,
        lane: None,
    }
    .into_replay()
}

pub(super) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(super) fn number<T: std::str::FromStr>(field: Option<Vec<u8>>) -> Result<T, StoreError> {
    field
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
        .ok_or_else(|| StoreError::Unexpected("unexpected reply: a number is missing".into()))
}

pub(super) fn value_text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

/// `used_memory` of `maxmemory` in `INFO memory`, the largest over the nodes of a Cluster's
/// answer (a map by node); `None` where no node has a `maxmemory`.
pub(super) fn memory_usage(info: &Value) -> Option<f64> {
    let texts: Vec<String> = match info {
        Value::Map(nodes) => nodes.iter().map(|(_, v)| value_text(v)).collect(),
        other => vec![value_text(other)],
    };
    texts
        .iter()
        .filter_map(|text| {
            let field = |name: &str| -> Option<f64> {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
                    .trim()
                    .parse()
                    .ok()
            };
            let max = field("maxmemory").filter(|max| *max > 0.0)?;
            Some(field("used_memory")? / max)
        })
        .reduce(f64::max)
}

//! The one error type of the envoy library. Executors do not use it: a resource that cannot be
//! converged is an outcome to report, not an error to propagate (see [`crate::executors::Outcome`]).

/// Everything that can go wrong in the envoy library outside of a single resource.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A managed path is not absolute.
    #[error("path {0:?} is not absolute")]
    PathNotAbsolute(String),
    /// A managed path contains a `..` component and could escape `--root`.
    #[error("path {0:?} contains `..`")]
    PathEscapes(String),
    /// A managed path contains a NUL byte, which no file system accepts.
    #[error("path {0:?} contains a NUL byte")]
    PathNul(String),
    /// Two resources of a bundle share one id.
    #[error("duplicate resource id {0}")]
    DuplicateResource(String),
    /// A resource refers to an id that is not in the bundle.
    #[error("resource {from} {kind} unknown resource {to}")]
    UnknownResource {
        /// The resource holding the reference.
        from: String,
        /// `requires` or `notifies`.
        kind: &'static str,
        /// The id that does not exist.
        to: String,
    },
    /// The resources' edges form at least one cycle; names every resource on a cycle.
    #[error("dependency cycle among {}", .0.join(", "))]
    Cycle(Vec<String>),
    /// The LMDB cache failed.
    #[error("cache: {0}")]
    Cache(#[from] heed::Error),
    /// The cache directory could not be created.
    #[error("cache directory {path}: {source}")]
    CacheDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored value does not decode; the cache was written by something else or is damaged.
    #[error("cache: cannot decode {what}: {source}")]
    CacheDecode {
        /// Which value.
        what: &'static str,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// A metadata value exceeds [`crate::limits::META_VALUE_BYTES_MAX`].
    #[error("cache: meta value for {key} is {n_bytes} bytes, more than the limit of {limit}")]
    MetaTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        n_bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

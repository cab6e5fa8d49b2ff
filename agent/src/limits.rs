//! Every bound the envoy library enforces, each with the reason it exists. A limit lives here so it
//! can be found, reviewed and tuned in one place.

/// Size of the LMDB memory map for the cache. LMDB cannot grow past it (writes fail with
/// `MapFull`), and on Linux an unused map costs only address space, so it is sized for the worst
/// case: one large bundle plus a full run queue ([`RUN_QUEUE_LEN_MAX`] reports of a few hundred
/// resources each).
pub const CACHE_MAP_BYTES: usize = 256 * 1024 * 1024;

/// Most run reports kept while the server is unreachable. An envoy offline for weeks must not fill
/// its disk (or the cache's map) with reports nobody will read; the oldest are dropped first,
/// because the newest say most about the host's current state. At one run every 30 minutes this
/// is about three weeks of history.
pub const RUN_QUEUE_LEN_MAX: u64 = 1000;

/// Largest value `Cache::set_meta` accepts. Metadata is small (envoy id, server list, keys);
/// anything larger is a caller bug that would otherwise sit in the map forever.
pub const META_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Timeout of an exec resource that sets none. Long enough for package installs and builds, short
/// enough that a hung command cannot stall every later run.
pub const EXEC_TIMEOUT_DEFAULT_S: u32 = 300;

/// Bytes of an exec's stderr kept to report its last line. A chatty command must not grow the
/// envoy's memory; the end of the output is where the reason for a failure usually is.
pub const EXEC_STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Longest message reported for one resource (characters). Reports are queued and sent in bulk,
/// so one runaway message must not crowd out the rest.
pub const RESULT_MESSAGE_CHARS_MAX: usize = 1024;

/// Timeout of one git command that talks to the remote (clone, fetch, ls-remote). A large
/// repository over a slow link takes minutes; a remote that stops answering must not hold every
/// later resource of the run.
pub const GIT_NETWORK_TIMEOUT_S: u64 = 900;

/// Timeout of one git command that only reads or writes the local clone (rev-parse, status,
/// checkout). These take well under a second; a minute covers a huge checkout on a slow disk.
pub const GIT_LOCAL_TIMEOUT_S: u64 = 60;

/// Largest source archive a source_package downloads. Source tarballs are megabytes; a URL
/// that streams without end must not fill the disk under `/var/cache`.
pub const SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Timeout of one source_package download, from connecting to the last byte. Enough for
/// [`SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX`] over a modest link; a stalled server fails the resource
/// instead of the run.
pub const SOURCE_PACKAGE_DOWNLOAD_TIMEOUT_S: u64 = 900;

/// Most bytes a source archive may unpack to (sum of its entries' sizes). A small compressed
/// archive can expand to fill a disk; real source trees stay far below this.
pub const SOURCE_PACKAGE_UNPACKED_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;

/// Timeout of each build command of a source_package. Compiling a real project takes longer
/// than an exec's default; a hung build must still end so later runs can retry it.
pub const SOURCE_PACKAGE_BUILD_TIMEOUT_S: u64 = 3600;

/// Longest user or group name accepted (characters): what the shadow tools and utmp allow, so a
/// longer name is refused with our message before `useradd` or `groupadd` refuses it with theirs.
pub const ACCOUNT_NAME_CHARS_MAX: usize = 32;

/// Largest ROOT/etc/passwd or ROOT/etc/group read to decide a user or group resource. Real files
/// are kilobytes; a runaway one must not be read into memory whole for every account resource.
pub const ACCOUNT_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Timeout of one useradd, usermod, userdel, groupadd, groupmod or groupdel run. They edit a few
/// files under a lock; `usermod --uid` also re-owns the home directory's tree, which takes longest.
pub const ACCOUNT_TOOL_TIMEOUT_S: u64 = 300;

/// Most characters of a cron.d file name taken from the resource name (a hash of the whole name
/// follows), so a long name still gives a file name far below NAME_MAX.
pub const CRON_FILE_NAME_STEM_CHARS_MAX: usize = 64;

/// Largest existing cron.d file read to compare with the wanted entry. What the cron executor
/// writes is one comment line and one entry; anything larger is replaced without being read whole.
pub const CRON_FILE_BYTES_MAX: u64 = 64 * 1024;

/// How long a package manager query may run (`dpkg-query`, `apt-cache policy`, `apt-get -s`,
/// `rpm -q`, `dnf repoquery`). They read local databases and lists; a minute means something is
/// wedged, and a check must not stall the run.
pub const PACKAGE_QUERY_TIMEOUT_S: u64 = 60;

/// How long a package manager change may run (`apt-get install/remove/update`, `dnf
/// install/remove/makecache`). Downloads and maintainer scripts can be slow; a hung one must not
/// stall every later run, and the process group is killed with it.
pub const PACKAGE_CHANGE_TIMEOUT_S: u64 = 900;

/// How long apt waits for another apt or dpkg (say, unattended-upgrades) to release its lock
/// before failing; well inside [`PACKAGE_CHANGE_TIMEOUT_S`], so the wait fails with apt's own
/// message rather than a timeout.
pub const PACKAGE_LOCK_WAIT_S: u64 = 120;

/// Largest public key a repository resource writes. An armored key of a few subkeys is a few
/// KiB; anything this large is a mistake, not a key.
pub const REPOSITORY_KEY_BYTES_MAX: usize = 64 * 1024;

/// Longest systemd unit name a service resource accepts (characters): systemd's own limit
/// (`UNIT_NAME_MAX`, 255 plus the NUL), so a longer name is refused with our message.
pub const SERVICE_UNIT_NAME_CHARS_MAX: usize = 255;

/// How long a `systemctl` query may run (`is-enabled`, `is-active`, `show`). They read unit
/// files or ask the manager over its socket; a wedged manager must not stall the run.
pub const SERVICE_QUERY_TIMEOUT_S: u64 = 60;

/// How long a `systemctl` change may run (`enable`, `disable`, `daemon-reload`, `start`,
/// `stop`, `restart`). A start or stop waits for the unit's own timeouts (90 s each by
/// default, so a restart up to three minutes); past this the unit is hung, not slow.
pub const SERVICE_CHANGE_TIMEOUT_S: u64 = 300;

/// How long a docker query may run (`container inspect`, `image inspect`). The engine answers
/// in milliseconds; an engine that hangs must fail the resource, not the run.
pub const DOCKER_QUERY_TIMEOUT_S: u64 = 60;

/// How long a docker change to a container may run (`create`, `start`, `stop`, `unpause`,
/// `rm --force`). `stop` waits for the container's stop timeout (10 s by default) before
/// killing it; a start can wait on volumes and networks.
pub const DOCKER_CHANGE_TIMEOUT_S: u64 = 300;

/// How long `docker image pull` may run. Images are up to gigabytes over a modest link; a
/// registry that stops answering fails the resource instead of holding every later run.
pub const DOCKER_PULL_TIMEOUT_S: u64 = 1800;

//! The open-file limit. A server holding a connection per envoy, and a load generator playing
//! tens of thousands of envoys, need one descriptor per connection: far above the usual soft
//! limit of 1,024.

/// Raises this process's open-file limit as far as it may go: soft and hard limits to the
/// kernel's ceiling (`fs.nr_open`) when privileged, else the soft limit to the hard one.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, ceiling, ceiling).is_ok() {
        return Ok(ceiling);
    }
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_limit_never_goes_down() {
        let (before, _) = rlimit::Resource::NOFILE.get().unwrap();
        let now = super::raise_open_files_limit().unwrap();
        assert!(now >= before);
        assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, now);
    }
}

//! Process limits a server needs raised before it accepts connections.

/// Raises this process's soft limit on open files to its hard limit, as
/// Go's runtime does at start, and returns the limit now in force (`None`
/// where it cannot be read).
///
/// Every connection costs a file descriptor; a soft limit of 1024 (a common
/// default) would cap a server at about a thousand clients whatever its own
/// connection limit says, and a process out of descriptors cannot even
/// accept the client that would have replaced an idle one. The hard limit
/// is the administrator's bound and is left alone.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

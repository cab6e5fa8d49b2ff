//! Limits of the stack compiler, each with the reason for its value. The compressed archive
//! size is limited before it gets here, by `crate::limits::STACK_ARCHIVE_BYTES_MAX`.

/// Most files in a stack: modules, templates and static files of a real fleet number in the
/// hundreds; tens of thousands means a build tree or a `node_modules` was packed by mistake.
pub const STACK_FILES_MAX: usize = 10_000;

/// Most bytes in a stack once unpacked: bounds the memory of a publish (a gzip bomb stops
/// here) and what every peer keeps of each version. Stacks are text and small static files.
pub const STACK_UNPACKED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most nodes in one YAML document, aliases expanded: refuses "billion laughs" documents
/// before they exhaust memory; a large module has a few thousand nodes.
pub const YAML_NODES_MAX: usize = 100_000;

/// Deepest nesting of YAML lists and mappings: resources nest three or four levels; the tree
/// is walked recursively, so a pathological nesting must not reach the stack's end.
pub const YAML_DEPTH_MAX: usize = 64;

/// Largest rendered template: a configuration file beyond this is a runaway loop, and each
/// rendered file travels in a bundle to every envoy it applies to.
pub const RENDERED_FILE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest total of file contents (rendered, inline and copied) in one bundle: bundles are
/// kept in memory per distinct bundle, sent whole on change and cached by every envoy.
pub const BUNDLE_CONTENT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Allowance for tar headers, long-name records and block padding on top of
/// [`STACK_UNPACKED_BYTES_MAX`] when bounding the decompressed stream: a few KiB per file.
pub const TAR_OVERHEAD_BYTES_MAX: usize = STACK_FILES_MAX * 4 * 1024;

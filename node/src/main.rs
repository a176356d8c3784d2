//! `shoal-node`: see `--help`.

use std::io::IsTerminal;

use clap::Parser;
use shoal_node::settings::{Cli, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: building a graph allocates and frees hundreds of
/// megabytes in many threads, and glibc's malloc keeps most of that resident afterwards (a
/// 100k x 128 node stayed at 430 MiB after indexing, against 130 MiB for the same data
/// opened after a restart); mimalloc returns freed pages to the system. It is built without
/// transparent huge pages (the workspace enables its `no_thp` feature): a purge cannot shrink a
/// huge page that still holds one live block, so with them the same node kept about 60 MiB more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the `libmimalloc-sys` bindings name
/// only some options). The test below checks it is the option whose default is 1000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Return freed memory to the system at once (mimalloc's `purge_delay` 0) unless the
/// `MIMALLOC_PURGE_DELAY` environment variable chooses otherwise.
///
/// mimalloc purges freed pages only when the heap that freed them allocates again, after
/// `purge_delay` (1 s by default in mimalloc 3). The threads that build a graph
/// go idle when the build ends, so what they freed stayed resident: a 100k x 128 node held 261
/// to 418 MiB of anonymous memory after indexing, 139 to 150 MiB with an immediate purge
/// (BENCHMARKS.md, "Memory after indexing").
fn return_freed_memory_at_once() {
    if !purge_delay_chosen_by_env() {
        #[allow(unsafe_code)]
        // SAFETY: mi_option_set stores an integer in mimalloc's option table with a plain
        // (non-atomic) write that other threads read when they purge; it runs first thing in
        // `main`, before the process starts any thread. Any value is valid for this option.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0)
        };
    }
}

/// Whether the environment sets mimalloc's purge delay: mimalloc reads its variables ignoring
/// case, and the option's older name (`MIMALLOC_RESET_DELAY`) too.
fn purge_delay_chosen_by_env() -> bool {
    std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|n| {
            n.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY")
                || n.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    })
}

fn main() -> anyhow::Result<()> {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    let settings = Settings::load(&cli)?;
    let filter = EnvFilter::try_new(&settings.log.level)?;
    let ansi = std::io::stdout().is_terminal();
    match settings.log.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(shoal_node::node::run(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reading and writing integers in mimalloc's option table.
        let (default, after) = unsafe {
            let default = libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY);
            return_freed_memory_at_once();
            (
                default,
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        if !purge_delay_chosen_by_env() {
            assert_eq!(default, 1000, "option 15 is not mimalloc 3's purge_delay");
            assert_eq!(after, 0);
        }
    }
}

//! Loading the embedded object with its load-time globals, the resource
//! limits that loading needs, and the maps userspace fills or keeps.

use agent_common::{
    COUNTERS_MAP, ENV_ALLOW_MAP, ENV_PREFIX_MAP, ENV_PREFIX_WORDS, EVENTS_MAP, EnvKey, LOST_CAUSES,
    LOST_MAP, TOOLS_MAP, TRACKED_MAP, env_prefix_index, globals,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
};

use super::{
    error::LoadError,
    kernel::{Globals, require_privileges},
};

/// The BPF object built by `build.rs`, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Load the object (maps created, no program loaded yet).
pub fn open(g: &Globals) -> Result<Ebpf, LoadError> {
    require_privileges()?;
    bump_memlock();
    bump_nofile();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::AGENT_TGID, &g.agent_tgid, true)
        .override_global(globals::TASK_REAL_PARENT_OFF, &g.task_real_parent, true)
        .override_global(globals::TASK_TGID_OFF, &g.task_tgid, true)
        .override_global(globals::TASK_PID_OFF, &g.task_pid, true)
        .override_global(globals::TASK_EXIT_CODE_OFF, &g.task_exit_code, true)
        .override_global(globals::TASK_MM_OFF, &g.task_mm, true)
        .override_global(globals::MM_START_STACK_OFF, &g.mm_start_stack, true)
        .override_global(globals::FORK_CHILD_PID_OFF, &g.fork_child_pid, true)
        .override_global(globals::EXIT_GROUP_DEAD_OFF, &g.exit_group_dead, true)
        .override_global(globals::SOCK_ERR_OFF, &g.sock_err, true)
        .override_global(globals::SKC_NET_OFF, &g.skc_net, true)
        .override_global(globals::NET_INUM_OFF, &g.net_inum, true)
        .override_global(globals::RETRANS_SKADDR_OFF, &g.retrans_skaddr, true)
        .override_global(globals::RETRANS_STATE_OFF, &g.retrans_state, true)
        .override_global(globals::TCP_QUIET_NS, &g.tcp_quiet_ns, true)
        .override_global(globals::TRACK_AGENT_CHILDREN, &g.track_agent_children, true)
        .override_global(globals::ENV_ALL_EXECS, &g.env_all_execs, true)
        .override_global(globals::FILTER_UID, &g.filter_uid, true)
        .override_global(aya_log::LEVEL, &g.bpf_log_level, true);
    if g.task_mm != 0 {
        // Whole-event in-flight table only serves the no-BTF fallback (20 MiB otherwise).
        loader.map_max_entries("EXEC_INFLIGHT_FULL", 1);
    }
    loader.load(OBJECT).map_err(|e| {
        let errno = super::error::errno_of(&e);
        let msg = super::error::one_line(&e);
        if errno == Some(libc::EPERM) {
            LoadError::NotPermitted(msg)
        } else {
            LoadError::Object(msg)
        }
    })
}

fn bump_memlock() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if setrlimit(Resource::Memlock, unlimited).is_err() {
        tracing::debug!("raising RLIMIT_MEMLOCK failed (fine on kernels with memcg accounting)");
    }
}

/// Every uprobe and tracepoint link holds a file descriptor: a node with
/// many Go toolchains and libssl copies needs more than the usual soft
/// limit of 1024. Soft is raised to the hard limit (a traced command gets
/// the limits the agent started with back: `traced`).
fn bump_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is unlimited: above any soft limit.
    let below = match (lim.current, lim.maximum) {
        (Some(c), Some(m)) => c < m,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            tracing::debug!(from = ?lim.current, to = ?lim.maximum, "RLIMIT_NOFILE raised");
        }
    }
}

/// Fill the environment allow-list map.
pub fn set_env_allow(ebpf: &mut Ebpf, names: &[String]) -> Result<Vec<String>, LoadError> {
    let mut skipped = Vec::new();
    let mut bits = vec![0u64; ENV_PREFIX_WORDS as usize];
    for n in names {
        let b = n.as_bytes();
        if let Some(&b0) = b.first() {
            let i = env_prefix_index(b0, b.get(1).copied().unwrap_or(b'='));
            bits[(i >> 6) as usize] |= 1 << (i & 63);
        }
    }
    {
        let pm = ebpf
            .map_mut(ENV_PREFIX_MAP)
            .ok_or(LoadError::NoMap("ENV_PREFIX"))?;
        let mut pm: Array<&mut MapData, u64> = Array::try_from(pm).map_err(|e| LoadError::Map {
            name: "ENV_PREFIX",
            msg: e.to_string(),
        })?;
        for (i, w) in bits.iter().enumerate() {
            if *w != 0 {
                pm.set(i as u32, w, 0).map_err(|e| LoadError::Map {
                    name: "ENV_PREFIX",
                    msg: e.to_string(),
                })?;
            }
        }
    }
    let map = ebpf
        .map_mut(ENV_ALLOW_MAP)
        .ok_or(LoadError::NoMap("ENV_ALLOW"))?;
    let mut map: LpmTrie<&mut MapData, EnvKey, u8> =
        LpmTrie::try_from(map).map_err(|e| LoadError::Map {
            name: "ENV_ALLOW",
            msg: e.to_string(),
        })?;
    for n in names {
        match EnvKey::new(n.as_bytes()) {
            Some((k, bits)) => {
                map.insert(&Key::new(bits, k), &1, 0)
                    .map_err(|e| LoadError::Map {
                        name: "ENV_ALLOW",
                        msg: e.to_string(),
                    })?
            }
            None => skipped.push(n.clone()),
        }
    }
    Ok(skipped)
}

/// Fill the tool-name map: `tools` start tracked trees, `clients` only get
/// their environment read, `quiet` neither wake the reader nor get their
/// environment read (`comm` is at most
/// 15 bytes: longer names are cut as the kernel cuts them; a name in
/// `tools` is a tool whatever else lists it).
pub fn set_tools(
    ebpf: &mut Ebpf,
    tools: &[String],
    clients: &[&str],
    quiet: &[&str],
) -> Result<(), LoadError> {
    let map = ebpf.map_mut(TOOLS_MAP).ok_or(LoadError::NoMap("TOOLS"))?;
    let mut map: BpfHashMap<&mut MapData, [u8; 16], u8> =
        BpfHashMap::try_from(map).map_err(|e| LoadError::Map {
            name: "TOOLS",
            msg: e.to_string(),
        })?;
    let entries = clients
        .iter()
        .map(|c| (*c, agent_common::TOOL_ENV))
        .chain(quiet.iter().map(|q| (*q, agent_common::TOOL_QUIET)))
        .chain(tools.iter().map(|t| (t.as_str(), agent_common::TOOL_TRACK)));
    for (name, class) in entries {
        let mut key = [0u8; 16];
        let b = name.as_bytes();
        let n = b.len().min(15);
        key[..n].copy_from_slice(&b[..n]);
        map.insert(&key, &class, 0).map_err(|e| LoadError::Map {
            name: "TOOLS",
            msg: e.to_string(),
        })?;
    }
    Ok(())
}

/// Take the map of tracked processes (userspace adds `agent trace` roots).
pub fn take_tracked(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, u32, u8>, LoadError> {
    let map = ebpf
        .take_map(TRACKED_MAP)
        .ok_or(LoadError::NoMap("TRACKED"))?;
    BpfHashMap::try_from(map).map_err(|e| LoadError::Map {
        name: "TRACKED",
        msg: e.to_string(),
    })
}

/// Take the per-CPU counters of events handled in the kernel.
pub fn take_counters(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = ebpf
        .take_map(COUNTERS_MAP)
        .ok_or(LoadError::NoMap("COUNTERS"))?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map {
        name: "COUNTERS",
        msg: e.to_string(),
    })
}

/// Take the events ring buffer (start reading it before attaching).
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    let map = ebpf
        .take_map(EVENTS_MAP)
        .ok_or(LoadError::NoMap("EVENTS"))?;
    RingBuf::try_from(map).map_err(|e| LoadError::Map {
        name: "EVENTS",
        msg: e.to_string(),
    })
}

/// Take the per-CPU loss counters.
pub fn take_lost(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = ebpf.take_map(LOST_MAP).ok_or(LoadError::NoMap("LOST"))?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map {
        name: "LOST",
        msg: e.to_string(),
    })
}

/// Sum of each loss counter over CPUs, in `LostCause` order.
pub fn read_lost(map: &PerCpuArray<MapData, u64>) -> Vec<u64> {
    (0..LOST_CAUSES)
        .map(|i| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
        .collect()
}

//! The `group` executor: a local group in ROOT/etc/group (and gshadow), or its absence.
//! Changes go through `groupadd`, `groupmod` and `groupdel` with `--prefix ROOT` unless ROOT is
//! `/`; the current state is read from ROOT/etc/group directly, like the `user` executor does.
//!
//! Fields: `gid` is managed when given (`groupmod --gid`, which also moves the primary gid of
//! the group's users in passwd); `system` is only used when creating (`groupadd --system`, a gid
//! from the system range). Membership is the `user` resource's business (`groups`), so a group
//! resource never adds or removes members. `state: absent` runs `groupdel`, which refuses to
//! remove a group that is some user's primary group: that is reported as a failure.

use serde::Deserialize;

use super::user::{account_tool, check_account_name, parse_state, read_group, run_tool};
use super::{Context, Ensure, Outcome};

/// The stack fields of a group resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: String,
    gid: Option<u32>,
    state: Option<String>,
    #[serde(default)]
    system: bool,
}

/// Converges one group resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: GroupSpec = serde_json::from_str(json).map_err(|err| format!("invalid group spec: {err}"))?;
    check_account_name("group", &spec.name)?;
    let state = parse_state(spec.state.as_deref())?;
    if spec.gid == Some(u32::MAX) {
        return Err(format!("invalid gid {} (it means \"no gid\" to the kernel)", u32::MAX));
    }
    let groups = read_group(ctx.root)?;
    let current = groups.iter().find(|group| group.name == spec.name);
    let (tool, summary) = match (state, current) {
        (Ensure::Absent, None) => return Ok(Outcome::Unchanged),
        (Ensure::Absent, Some(group)) => {
            let mut groupdel = account_tool(ctx.root, "groupdel");
            groupdel.arg(&spec.name);
            (groupdel, format!("removed (gid {})", group.gid))
        }
        (Ensure::Present, None) => {
            let mut groupadd = account_tool(ctx.root, "groupadd");
            let mut parts = Vec::new();
            if spec.system {
                groupadd.arg("--system");
                parts.push("system".to_string());
            }
            if let Some(gid) = spec.gid {
                groupadd.arg("--gid").arg(gid.to_string());
                parts.push(format!("gid {gid}"));
            }
            groupadd.arg(&spec.name);
            let summary = if parts.is_empty() { "created".into() } else { format!("created ({})", parts.join(", ")) };
            (groupadd, summary)
        }
        (Ensure::Present, Some(group)) => match spec.gid.filter(|gid| *gid != group.gid) {
            None => return Ok(Outcome::Unchanged),
            Some(gid) => {
                let mut groupmod = account_tool(ctx.root, "groupmod");
                groupmod.arg("--gid").arg(gid.to_string()).arg(&spec.name);
                (groupmod, format!("gid {} -> {gid}", group.gid))
            }
        },
    };
    if !ctx.noop {
        let program = tool.get_program().to_string_lossy().into_owned();
        run_tool(tool, &program, &spec.name)?;
    }
    Ok(Outcome::Changed(summary))
}

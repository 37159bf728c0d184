//! The kernel BTF reader (struct member offsets for the run-queue programs). Raw bytes rarely get
//! past the header, so the input is a list of type records laid out as real BTF (header, type
//! section, string section), with optional damage to the header and the tail.
#![no_main]
use agent::sources::kernel::btf::Btf;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Ty {
    kind: u8,
    kind_flag: bool,
    name: u8,
    /// Size, or the referenced type id (small ids, so references mostly land on real types).
    size_or_type: u8,
    big_size: Option<u32>,
    members: Vec<(u8, u8, u32)>,
    array: (u8, u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    names: Vec<String>,
    types: Vec<Ty>,
    /// Replace one header word (index, value).
    hdr_patch: Option<(u8, u32)>,
    truncate: Option<u16>,
    /// Raw bytes instead of the structured blob.
    raw: Option<Vec<u8>>,
}

fn build(inp: &Input) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name_off = vec![0u32];
    for n in &inp.names {
        name_off.push(strings.len() as u32);
        strings.extend(n.as_bytes());
        strings.push(0);
    }
    let name = |i: u8| name_off[i as usize % name_off.len()];
    let mut t = Vec::new();
    let w = |t: &mut Vec<u8>, v: u32| t.extend(v.to_le_bytes());
    for ty in &inp.types {
        let kind = (ty.kind % 21) as u32;
        let vlen = ty.members.len().min(0xffff) as u32;
        let info = (ty.kind_flag as u32) << 31 | kind << 24 | vlen;
        w(&mut t, name(ty.name));
        w(&mut t, info);
        w(&mut t, ty.big_size.unwrap_or(ty.size_or_type as u32));
        match kind {
            1 | 14 | 17 => w(&mut t, ty.array.1),
            3 => {
                w(&mut t, ty.array.0 as u32);
                w(&mut t, 1);
                w(&mut t, ty.array.1);
            }
            4 | 5 | 15 | 19 => {
                for &(n, id, off) in &ty.members {
                    w(&mut t, name(n));
                    w(&mut t, id as u32);
                    w(&mut t, off);
                }
            }
            6 | 13 => {
                for &(n, id, _) in &ty.members {
                    w(&mut t, name(n));
                    w(&mut t, id as u32);
                }
            }
            _ => {}
        }
    }
    let mut hdr = [0u32; 6];
    hdr[0] = 0x0001_eb9f; // magic, version 1, flags 0
    hdr[1] = 24;
    hdr[2] = 0;
    hdr[3] = t.len() as u32;
    hdr[4] = t.len() as u32;
    hdr[5] = strings.len() as u32;
    if let Some((i, v)) = inp.hdr_patch {
        hdr[i as usize % 6] = v;
    }
    let mut b: Vec<u8> = hdr.iter().flat_map(|v| v.to_le_bytes()).collect();
    b.extend(t);
    b.extend(strings);
    if let Some(n) = inp.truncate {
        b.truncate(b.len().saturating_sub(n as usize));
    }
    b
}

fuzz_target!(|inp: Input| {
    let blob = match &inp.raw {
        Some(raw) => raw.clone(),
        None => build(&inp),
    };
    let Ok(btf) = Btf::parse(&blob) else { return };
    // Every name as struct and as member: the agent asks e.g. ("task_struct", "pid").
    let mut names: Vec<&str> = inp.names.iter().map(String::as_str).collect();
    names.truncate(8);
    names.push("");
    for s in &names {
        for m in &names {
            let _ = btf.member(s, m);
        }
    }
});

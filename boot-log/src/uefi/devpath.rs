//! Best-effort text of a UEFI device path (the UEFI spec's text form for
//! the nodes firmware logs most), so operators can tell which image a
//! digest belongs to. Never fails: unknown nodes print as `Path(t,s,hex)`
//! and a malformed path ends in `<malformed>`.

use std::fmt::Write;

use super::guid::Guid;
use super::reader::Reader;

/// Renders a device path, nodes separated by `/`, instances by `,`.
pub fn device_path_text(path: &[u8]) -> String {
    let mut out = String::new();
    let mut r = Reader::new(path);
    let mut first = true;
    while !r.is_empty() {
        let (Some(ty), Some(sub), Some(len)) = (r.u8(), r.u8(), r.u16()) else {
            push(&mut out, &mut first, "<malformed>");
            break;
        };
        let Some(body) = usize::from(len).checked_sub(4).and_then(|n| r.bytes(n)) else {
            push(&mut out, &mut first, "<malformed>");
            break;
        };
        match (ty, sub) {
            (0x7F, 0xFF) => break,
            (0x7F, 0x01) => {
                out.push(',');
                first = true;
                continue;
            }
            _ => {}
        }
        let node = node_text(ty, sub, body);
        push(&mut out, &mut first, &node);
    }
    out
}

fn push(out: &mut String, first: &mut bool, node: &str) {
    if !*first {
        out.push('/');
    }
    out.push_str(node);
    *first = false;
}

fn guid(r: &mut Reader<'_>) -> Option<Guid> {
    r.array().map(Guid)
}

fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn node_text(ty: u8, sub: u8, body: &[u8]) -> String {
    known_node(ty, sub, body).unwrap_or_else(|| format!("Path({ty},{sub},{})", hex::encode(body)))
}

/// The text of a known node, `None` for an unknown or short one.
fn known_node(ty: u8, sub: u8, body: &[u8]) -> Option<String> {
    let mut r = Reader::new(body);
    let text = match (ty, sub) {
        // Hardware.
        (0x01, 0x01) => {
            let func = r.u8()?;
            let dev = r.u8()?;
            format!("Pci({dev:#x},{func:#x})")
        }
        (0x01, 0x03) => {
            let mem = r.u32()?;
            let start = r.u64()?;
            let end = r.u64()?;
            format!("MemoryMapped({mem:#x},{start:#x},{end:#x})")
        }
        (0x01, 0x04) => vendor("VenHw", &mut r)?,
        // ACPI.
        (0x02, 0x01) => {
            let hid = r.u32()?;
            let uid = r.u32()?;
            match hid {
                0x0A03_41D0 => format!("PciRoot({uid:#x})"),
                0x0A08_41D0 => format!("PcieRoot({uid:#x})"),
                _ => format!("Acpi({hid:#010x},{uid:#x})"),
            }
        }
        // Messaging.
        (0x03, 0x02) => {
            let pun = r.u16()?;
            let lun = r.u16()?;
            format!("Scsi({pun:#x},{lun:#x})")
        }
        (0x03, 0x05) => {
            let port = r.u8()?;
            let iface = r.u8()?;
            format!("USB({port:#x},{iface:#x})")
        }
        (0x03, 0x0A) => vendor("VenMsg", &mut r)?,
        (0x03, 0x0B) => {
            let mac = r.bytes(6)?;
            format!("MAC({})", hex::encode(mac))
        }
        (0x03, 0x12) => {
            let hba = r.u16()?;
            let pm = r.u16()?;
            let lun = r.u16()?;
            format!("Sata({hba:#x},{pm:#x},{lun:#x})")
        }
        (0x03, 0x17) => {
            let nsid = r.u32()?;
            let eui = r.array::<8>()?;
            format!("NVMe({nsid:#x},{})", hex::encode(eui))
        }
        (0x03, 0x18) => format!("Uri({})", String::from_utf8_lossy(body)),
        // Media.
        (0x04, 0x01) => {
            let part = r.u32()?;
            let start = r.u64()?;
            let size = r.u64()?;
            let sig = r.array::<16>()?;
            let _mbr_type = r.u8()?;
            let sig_type = r.u8()?;
            let sig = match sig_type {
                0x01 => format!(
                    "MBR,{:#010x}",
                    u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]])
                ),
                0x02 => format!("GPT,{}", Guid(sig)),
                _ => format!("{sig_type},0"),
            };
            format!("HD({part},{sig},{start:#x},{size:#x})")
        }
        (0x04, 0x02) => {
            let entry = r.u32()?;
            let start = r.u64()?;
            let size = r.u64()?;
            format!("CDROM({entry:#x},{start:#x},{size:#x})")
        }
        (0x04, 0x03) => vendor("VenMedia", &mut r)?,
        (0x04, 0x04) => utf16(body),
        (0x04, 0x06) => format!("FvFile({})", guid(&mut r)?),
        (0x04, 0x07) => format!("Fv({})", guid(&mut r)?),
        (0x04, 0x08) => {
            let _reserved = r.u32()?;
            let start = r.u64()?;
            let end = r.u64()?;
            format!("Offset({start:#x},{end:#x})")
        }
        // BIOS boot specification.
        (0x05, 0x01) => {
            let dev = r.u16()?;
            let _status = r.u16()?;
            format!(
                "BBS({dev:#x},{})",
                String::from_utf8_lossy(r.rest()).trim_end_matches('\0')
            )
        }
        _ => return None,
    };
    Some(text)
}

fn vendor(kind: &str, r: &mut Reader<'_>) -> Option<String> {
    let g = guid(r)?;
    let mut s = format!("{kind}({g}");
    if !r.is_empty() {
        let _ = write!(s, ",{}", hex::encode(r.rest()));
    }
    s.push(')');
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::device_path_text;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("hex")
    }

    #[test]
    fn fixture_paths() {
        // OVMF's option ROM of the VGA device and QEMU's -kernel image.
        assert_eq!(
            device_path_text(&unhex(
                "02010c00d041030a0000000001010600000204081800000000000026010000000000ffcf0300000000007fff0400"
            )),
            "PciRoot(0x0)/Pci(0x2,0x0)/Offset(0x12600,0x3cfff)"
        );
        assert_eq!(
            device_path_text(&unhex(
                "0403140072f728144ab61e44b8c39ebdd7f893c7040412006b00650072006e0065006c0000007fff0400"
            )),
            "VenMedia(1428f772-b64a-441e-b8c3-9ebdd7f893c7)/kernel"
        );
        assert_eq!(
            device_path_text(&unhex(
                "04071400c9bdb87cebf8344faaea3ee4af6516a10406140021aa2c4614760345836e8ab6f46623317fff0400"
            )),
            "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)"
        );
    }

    #[test]
    fn malformed_and_unknown_nodes() {
        assert_eq!(
            device_path_text(&[0x09, 0x09, 0x05, 0x00, 0xAB]),
            "Path(9,9,ab)"
        );
        assert_eq!(device_path_text(&[0x01, 0x01, 0x02, 0x00]), "<malformed>");
        assert_eq!(device_path_text(&[0x01, 0x01, 0xFF, 0x00]), "<malformed>");
        assert_eq!(device_path_text(&[0x01]), "<malformed>");
        // A PCI node too short for its fields falls back to the raw form.
        assert_eq!(
            device_path_text(&[0x01, 0x01, 0x05, 0x00, 0x01]),
            "Path(1,1,01)"
        );
    }
}

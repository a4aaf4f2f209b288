//! Byte-exact encoding and decoding of JunoDB wire protocol version 1 operational
//! messages: the 12-byte message header, the operational sub-header, the meta
//! component and the payload component. All integers are big-endian.
//!
//! The decoder never panics and never trusts a length field: every malformed input
//! comes back as a [`DecodeError`].

use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `0x5050`, the first two bytes of every JunoDB message.
pub const MAGIC: u16 = 0x5050;
/// The only protocol version JunoDB defines.
pub const VERSION: u8 = 1;
/// Length of the message header that precedes every message.
pub const HEADER_LEN: usize = 12;
/// Length of message header plus operational sub-header.
pub const OP_HEADER_LEN: usize = 16;

const COMP_PAYLOAD: u8 = 1;
const COMP_META: u8 = 2;

const TAG_TTL: u8 = 1;
const TAG_VERSION: u8 = 2;
const TAG_CREATION_TIME: u8 = 3;
const TAG_EXPIRATION_TIME: u8 = 4;
const TAG_REQUEST_ID: u8 = 5;
const TAG_SOURCE_INFO: u8 = 6;
const TAG_LAST_MODIFICATION: u8 = 7;
const TAG_ORIGINATOR: u8 = 8;
const TAG_CORRELATION_ID: u8 = 9;
const TAG_REQUEST_HANDLING_TIME: u8 = 10;
const TAG_UDF_NAME: u8 = 11;
/// How many meta fields there are (tags 1 to 11): a message encodes each at most once.
const FIELD_TAGS: usize = 11;

/// Why bytes are not a valid operational message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("message size {0} out of range")]
    BadSize(u32),
    #[error("message type {0} is not an operational message")]
    NotOperational(u8),
    #[error("malformed component: {0}")]
    BadComponent(&'static str),
    #[error("malformed meta field: {0}")]
    BadMeta(&'static str),
}

/// The request/response bits of the message-type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Response,
    Request,
    OneWayRequest,
}

/// A decoded 12-byte message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub direction: Direction,
    /// Total message length, header included.
    pub size: u32,
    pub opaque: u32,
}

impl Header {
    /// Decodes a header; the caller then reads `size - 12` more bytes. A bad magic or
    /// version means the stream is not JunoDB framing and the connection should close.
    pub fn decode(b: &[u8; HEADER_LEN], max_size: u32) -> Result<Header, DecodeError> {
        let magic = u16::from_be_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if b[2] != VERSION {
            return Err(DecodeError::BadVersion(b[2]));
        }
        let size = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if (size as usize) < HEADER_LEN || size > max_size {
            return Err(DecodeError::BadSize(size));
        }
        let direction = match b[3] >> 6 {
            0 => Direction::Response,
            1 => Direction::Request,
            3 => Direction::OneWayRequest,
            _ => return Err(DecodeError::NotOperational(b[3])),
        };
        Ok(Header {
            msg_type: b[3] & 0x3f,
            direction,
            size,
            opaque: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// Source Info meta field: who sent the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    pub ip: IpAddr,
    pub port: u16,
    pub app_name: Vec<u8>,
}

/// Every meta field JunoDB defines. `None` means the field is absent on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Seconds to live (requests) or remaining (responses).
    pub ttl: Option<u32>,
    pub version: Option<u32>,
    /// Unix seconds.
    pub creation_time: Option<u32>,
    /// Unix seconds.
    pub expiration_time: Option<u32>,
    pub request_id: Option<[u8; 16]>,
    pub source_info: Option<SourceInfo>,
    /// Unix nanoseconds.
    pub last_modification: Option<u64>,
    /// Request id of the request that wrote the record's current version.
    pub originator: Option<[u8; 16]>,
    pub correlation_id: Option<Vec<u8>>,
    /// Microseconds the proxy spent on the request.
    pub request_handling_time: Option<u32>,
    pub udf_name: Option<Vec<u8>>,
}

/// The payload field: a type byte (0 clear, 1 client-encrypted, 2 proxy-encrypted,
/// 3 client-compressed) and opaque data. Empty data means no payload on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub kind: u8,
    pub data: Vec<u8>,
}

/// One operational message, request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpMessage {
    pub direction: Direction,
    pub opaque: u32,
    pub opcode: u8,
    pub flags: u8,
    /// Requests: the shard id (meaningful only for storage servers).
    pub shard_id: u16,
    /// Responses: the status byte.
    pub status: u8,
    pub meta: Meta,
    pub namespace: Vec<u8>,
    pub key: Vec<u8>,
    pub payload: Payload,
}

impl OpMessage {
    /// An empty request for `opcode`.
    pub fn request(opcode: u8) -> Self {
        OpMessage {
            direction: Direction::Request,
            opaque: 0,
            opcode,
            flags: 0,
            shard_id: 0,
            status: 0,
            meta: Meta::default(),
            namespace: Vec::new(),
            key: Vec::new(),
            payload: Payload::default(),
        }
    }

    /// An empty response to this request with `status`: same opcode and opaque, the
    /// request id echoed, as JunoDB's proxy does (its namespace and key move into it).
    pub fn into_response(self, status: u8) -> Self {
        OpMessage {
            direction: Direction::Response,
            opaque: self.opaque,
            opcode: self.opcode,
            flags: 0,
            shard_id: 0,
            status,
            meta: Meta {
                request_id: self.meta.request_id,
                ..Meta::default()
            },
            namespace: self.namespace,
            key: self.key,
            payload: Payload::default(),
        }
    }

    /// Encodes the whole message, header included, appending to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        out.push(match self.direction {
            Direction::Response => 0x00,
            Direction::Request => 0x40,
            Direction::OneWayRequest => 0xc0,
        });
        out.extend_from_slice(&[0; 4]); // size, patched below
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.push(self.opcode);
        out.push(self.flags);
        match self.direction {
            Direction::Response => out.extend_from_slice(&[0, self.status]),
            _ => out.extend_from_slice(&self.shard_id.to_be_bytes()),
        }
        encode_meta(&self.meta, out);
        self.encode_payload_component(out);
        let size = (out.len() - start) as u32;
        out[start + 4..start + 8].copy_from_slice(&size.to_be_bytes());
    }

    /// Convenience wrapper around [`OpMessage::encode`], sized for the message at once
    /// (the header and meta component take under 128 bytes unless they carry source
    /// info, a correlation id or a UDF name).
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = 128 + self.namespace.len() + self.key.len() + self.payload.data.len();
        let mut v = Vec::with_capacity(size);
        self.encode(&mut v);
        v
    }

    fn encode_payload_component(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(COMP_PAYLOAD);
        out.push(self.namespace.len() as u8);
        out.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        let value_len = if self.payload.data.is_empty() {
            0
        } else {
            1 + self.payload.data.len() as u32
        };
        out.extend_from_slice(&value_len.to_be_bytes());
        out.extend_from_slice(&self.namespace);
        out.extend_from_slice(&self.key);
        if value_len != 0 {
            out.push(self.payload.kind);
            out.extend_from_slice(&self.payload.data);
        }
        pad(out, start, 8);
        let size = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    }

    /// Decodes a whole message (header included) whose header was already validated.
    pub fn decode(buf: &[u8]) -> Result<OpMessage, DecodeError> {
        let head: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::BadSize(buf.len() as u32))?;
        let header = Header::decode(head, u32::MAX)?;
        if header.size as usize != buf.len() || buf.len() < OP_HEADER_LEN {
            return Err(DecodeError::BadSize(header.size));
        }
        if header.msg_type != 0 {
            return Err(DecodeError::NotOperational(header.msg_type));
        }
        let mut msg = OpMessage::request(buf[12]);
        msg.direction = header.direction;
        msg.opaque = header.opaque;
        msg.flags = buf[13];
        if header.direction == Direction::Response {
            msg.status = buf[15];
        } else {
            msg.shard_id = u16::from_be_bytes([buf[14], buf[15]]);
        }
        let mut rest = &buf[OP_HEADER_LEN..];
        // As JunoDB does, trailing bytes too short to hold a component header are ignored.
        while rest.len() > 5 {
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size <= 5 || size > rest.len() {
                return Err(DecodeError::BadComponent("component size"));
            }
            let comp = &rest[..size];
            match comp[4] {
                COMP_META => msg.meta = decode_meta(comp)?,
                COMP_PAYLOAD => msg.decode_payload_component(comp)?,
                _ => {} // unknown components are skipped, as in JunoDB
            }
            rest = &rest[size..];
        }
        Ok(msg)
    }

    fn decode_payload_component(&mut self, comp: &[u8]) -> Result<(), DecodeError> {
        if comp.len() < 12 {
            return Err(DecodeError::BadComponent("payload header"));
        }
        let ns_len = comp[5] as usize;
        let key_len = u16::from_be_bytes([comp[6], comp[7]]) as usize;
        let value_len = u32::from_be_bytes([comp[8], comp[9], comp[10], comp[11]]) as usize;
        let body = &comp[12..];
        if ns_len + key_len + value_len > body.len() {
            return Err(DecodeError::BadComponent(
                "payload lengths exceed component",
            ));
        }
        self.namespace = body[..ns_len].to_vec();
        self.key = body[ns_len..ns_len + key_len].to_vec();
        let value = &body[ns_len + key_len..ns_len + key_len + value_len];
        // A one-byte payload field holds a type and no data: JunoDB treats it as empty.
        self.payload = match value {
            [kind, data @ ..] if !data.is_empty() => Payload {
                kind: *kind,
                data: data.to_vec(),
            },
            _ => Payload::default(),
        };
        Ok(())
    }
}

/// Appends zero bytes until `out.len() - start` is a multiple of `align`.
fn pad(out: &mut Vec<u8>, start: usize, align: usize) {
    while !(out.len() - start).is_multiple_of(align) {
        out.push(0);
    }
}

/// Fields are written in ascending tag order, the order of the samples in JunoDB's
/// protocol document; JunoDB's decoders accept any order.
fn encode_meta(meta: &Meta, out: &mut Vec<u8>) {
    let start = out.len();
    // (One tag each at most: no allocation for them.)
    let mut tags = [0u8; FIELD_TAGS];
    let mut count = 0;
    // (On the stack unless it carries source info, a correlation id or a UDF name.)
    let mut body: SmallVec<[u8; 128]> = SmallVec::new();
    let mut fixed = |tag: u8, size_type: u8, bytes: &[u8], body: &mut SmallVec<[u8; 128]>| {
        tags[count] = tag | size_type << 5;
        count += 1;
        body.extend_from_slice(bytes);
    };
    if let Some(v) = meta.ttl {
        fixed(TAG_TTL, 1, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = meta.version {
        fixed(TAG_VERSION, 1, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = meta.creation_time {
        fixed(TAG_CREATION_TIME, 1, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = meta.expiration_time {
        fixed(TAG_EXPIRATION_TIME, 1, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = meta.request_id {
        fixed(TAG_REQUEST_ID, 3, &v, &mut body);
    }
    if let Some(si) = &meta.source_info {
        fixed(TAG_SOURCE_INFO, 0, &encode_source_info(si), &mut body);
    }
    if let Some(v) = meta.last_modification {
        fixed(TAG_LAST_MODIFICATION, 2, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = meta.originator {
        fixed(TAG_ORIGINATOR, 3, &v, &mut body);
    }
    if let Some(v) = &meta.correlation_id {
        fixed(TAG_CORRELATION_ID, 0, &encode_byte_sequence(v), &mut body);
    }
    if let Some(v) = meta.request_handling_time {
        fixed(TAG_REQUEST_HANDLING_TIME, 1, &v.to_be_bytes(), &mut body);
    }
    if let Some(v) = &meta.udf_name {
        fixed(TAG_UDF_NAME, 0, &encode_byte_sequence(v), &mut body);
    }
    out.extend_from_slice(&[0; 4]);
    out.push(COMP_META);
    out.push(count as u8);
    out.extend_from_slice(&tags[..count]);
    pad(out, start, 4);
    out.extend_from_slice(&body);
    pad(out, start, 8);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn encode_source_info(si: &SourceInfo) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    let app_len = si.app_name.len().min(127) as u8;
    match si.ip {
        IpAddr::V4(ip) => {
            v[1] = app_len;
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v[1] = app_len | 0x80;
            v.extend_from_slice(&ip.octets());
        }
    }
    v[2..4].copy_from_slice(&si.port.to_be_bytes());
    v.extend_from_slice(&si.app_name[..app_len as usize]);
    pad(&mut v, 0, 4);
    v[0] = v.len() as u8;
    v
}

fn encode_byte_sequence(s: &[u8]) -> Vec<u8> {
    let len = s.len().min(251);
    let mut v = vec![0u8, len as u8];
    v.extend_from_slice(&s[..len]);
    pad(&mut v, 0, 4);
    v[0] = v.len() as u8;
    v
}

fn decode_meta(comp: &[u8]) -> Result<Meta, DecodeError> {
    let n = comp[5] as usize;
    let header_len = (6 + n).div_ceil(4) * 4;
    if header_len > comp.len() {
        return Err(DecodeError::BadMeta("header longer than component"));
    }
    let tags = &comp[6..6 + n];
    let mut off = header_len;
    let mut meta = Meta::default();
    for &t in tags {
        let (tag, size_type) = (t & 0x1f, t >> 5);
        let size = if size_type == 0 {
            *comp
                .get(off)
                .ok_or(DecodeError::BadMeta("field past end"))? as usize
        } else {
            1usize << (size_type + 1)
        };
        let field = comp
            .get(off..off + size)
            .ok_or(DecodeError::BadMeta("field past end"))?;
        let fixed = |want: usize| -> Result<&[u8], DecodeError> {
            if size == want {
                Ok(field)
            } else {
                Err(DecodeError::BadMeta("field size"))
            }
        };
        let u32_of = |f: &[u8]| u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
        match tag {
            TAG_TTL => meta.ttl = Some(u32_of(fixed(4)?)),
            TAG_VERSION => meta.version = Some(u32_of(fixed(4)?)),
            TAG_CREATION_TIME => meta.creation_time = Some(u32_of(fixed(4)?)),
            TAG_EXPIRATION_TIME => meta.expiration_time = Some(u32_of(fixed(4)?)),
            TAG_REQUEST_HANDLING_TIME => meta.request_handling_time = Some(u32_of(fixed(4)?)),
            TAG_LAST_MODIFICATION => {
                let f = fixed(8)?;
                meta.last_modification = Some(u64::from_be_bytes(f.try_into().unwrap()));
            }
            TAG_REQUEST_ID => meta.request_id = Some(fixed(16)?.try_into().unwrap()),
            TAG_ORIGINATOR => meta.originator = Some(fixed(16)?.try_into().unwrap()),
            TAG_SOURCE_INFO => meta.source_info = Some(decode_source_info(field)?),
            TAG_CORRELATION_ID => meta.correlation_id = Some(decode_byte_sequence(field)?),
            TAG_UDF_NAME => meta.udf_name = Some(decode_byte_sequence(field)?),
            _ => {} // unknown fields are skipped by their declared size
        }
        off += size;
    }
    Ok(meta)
}

fn decode_source_info(f: &[u8]) -> Result<SourceInfo, DecodeError> {
    if f.len() < 8 {
        return Err(DecodeError::BadMeta("source info size"));
    }
    let app_len = (f[1] & 0x7f) as usize;
    let port = u16::from_be_bytes([f[2], f[3]]);
    let (ip, off) = if f[1] & 0x80 != 0 {
        let b: [u8; 16] = f
            .get(4..20)
            .ok_or(DecodeError::BadMeta("source info size"))?
            .try_into()
            .unwrap();
        (IpAddr::V6(Ipv6Addr::from(b)), 20)
    } else {
        (IpAddr::V4(Ipv4Addr::new(f[4], f[5], f[6], f[7])), 8)
    };
    let app_name = f
        .get(off..off + app_len)
        .ok_or(DecodeError::BadMeta("source info app name"))?
        .to_vec();
    Ok(SourceInfo { ip, port, app_name })
}

fn decode_byte_sequence(f: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let len = *f.get(1).ok_or(DecodeError::BadMeta("byte sequence size"))? as usize;
    f.get(2..2 + len)
        .map(<[u8]>::to_vec)
        .ok_or(DecodeError::BadMeta("byte sequence length"))
}

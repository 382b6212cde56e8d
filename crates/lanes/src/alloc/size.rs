//! Block and segment sizes: how a request is rounded, which pool it comes from and
//! how big a segment a miss creates. Plain functions of a size, at the bottom of the
//! allocator's modules (the free indexes, the lane cache and the allocator use it;
//! it uses none of them).

/// Blocks are multiples of this many bytes.
pub(crate) const ROUND: usize = 512;
/// Requests up to this size come from the small pool.
pub(crate) const SMALL_REQUEST: usize = 1 << 20;
/// Segment size of the small pool.
pub(crate) const SMALL_SEGMENT: usize = 2 << 20;
/// Requests up to this size (and above [`SMALL_REQUEST`]) share 20 MiB segments.
pub(crate) const MEDIUM_REQUEST: usize = 10 << 20;
/// Segment size for medium requests.
pub(crate) const MEDIUM_SEGMENT: usize = 20 << 20;
/// Larger requests get their own segment, rounded up to this.
pub(crate) const LARGE_ROUND: usize = 2 << 20;

/// Rounds a request to its block size, `None` on overflow.
pub(crate) fn round_size(bytes: usize) -> Option<usize> {
    Some(bytes.max(1).checked_add(ROUND - 1)? & !(ROUND - 1))
}

/// The size of the segment a miss of `size` (already rounded) creates.
pub(crate) fn segment_size(size: usize) -> Option<usize> {
    if size <= SMALL_REQUEST {
        Some(SMALL_SEGMENT)
    } else if size <= MEDIUM_REQUEST {
        Some(MEDIUM_SEGMENT)
    } else {
        tight_segment_size(size)
    }
}

/// The smallest segment for `size`: when a shared 20 MiB segment is refused, a
/// medium request falls back to this before counting as out of memory.
pub(crate) fn tight_segment_size(size: usize) -> Option<usize> {
    Some(size.checked_add(LARGE_ROUND - 1)? & !(LARGE_ROUND - 1))
}

/// The two best-fit indexes: small blocks never come from large segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    Small,
    Large,
}

impl Pool {
    pub(crate) fn of_request(size: usize) -> Pool {
        if size <= SMALL_REQUEST {
            Pool::Small
        } else {
            Pool::Large
        }
    }

    /// Whether a free block with `remaining` spare bytes is worth splitting.
    pub(crate) fn should_split(self, remaining: usize) -> bool {
        match self {
            Pool::Small => remaining >= ROUND,
            Pool::Large => remaining > SMALL_REQUEST,
        }
    }
}

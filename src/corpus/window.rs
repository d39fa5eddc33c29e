//! Cutting a document's tokens into windows the model can run.

/// A slice of a document: tokens `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

/// Consecutive, non-overlapping windows of at most `ctx` tokens covering `n_tokens`.
/// Non-overlapping, so that every token is recorded exactly once.
pub fn windows(n_tokens: usize, ctx: usize) -> impl Iterator<Item = Window> {
    let ctx = ctx.max(1);
    (0..n_tokens).step_by(ctx).map(move |start| Window {
        start,
        len: ctx.min(n_tokens - start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once() {
        let w: Vec<Window> = windows(10, 4).collect();
        assert_eq!(
            w,
            vec![
                Window { start: 0, len: 4 },
                Window { start: 4, len: 4 },
                Window { start: 8, len: 2 }
            ]
        );
        assert_eq!(windows(4, 4).count(), 1);
        assert_eq!(windows(0, 4).count(), 0);
    }
}

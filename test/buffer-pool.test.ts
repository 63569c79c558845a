import t from 'tap'
import { BufferPool } from '../lib/store/buffer-pool.js'

t.test('a buffer given back is the next one taken', async t => {
  const pool = new BufferPool(1024, 4)
  const a = pool.take()
  t.equal(a.length, 1024)
  pool.give(a.subarray(0, 10)) // a view of it counts as the buffer
  t.equal(pool.free, 1)
  const b = pool.take()
  t.equal(b.buffer, a.buffer, 'same memory')
  t.equal(b.length, 1024, 'whole again')
  t.equal(pool.allocated, 1)
})

t.test('chunks the pool did not hand out, and second gives, are ignored', async t => {
  const pool = new BufferPool(1024, 4)
  pool.give(Buffer.alloc(1024))
  pool.give(Buffer.allocUnsafeSlow(1024))
  t.equal(pool.free, 0, 'foreign buffers of the right size are not taken')
  const a = pool.take()
  pool.give(a)
  pool.give(a)
  t.equal(pool.free, 1, 'given twice, kept once')
  const b = pool.take()
  const c = pool.take()
  t.not(b.buffer, c.buffer, 'never handed out twice at once')
})

t.test('keeps at most maxFree buffers', async t => {
  const pool = new BufferPool(64, 2)
  const taken = [pool.take(), pool.take(), pool.take()]
  for (const b of taken) pool.give(b)
  t.equal(pool.free, 2)
  t.equal(pool.allocated, 3)
})

t.test('refuses sizes that are not positive integers', async t => {
  t.throws(() => new BufferPool(0, 1), /size must be a positive integer, got 0/)
  t.throws(() => new BufferPool(10, -1), /maxFree must be a non-negative integer, got -1/)
})

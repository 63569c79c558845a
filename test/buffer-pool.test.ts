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

t.test('a shared buffer is reused only once every counted view is back, each counted once', async t => {
  const pool = new BufferPool(1024, 4)
  const slab = pool.takeShared()
  const a = pool.view(slab, 0, 100)
  const b = pool.view(a, 10, 20)
  pool.give(slab)
  pool.give(a)
  pool.give(a)
  t.equal(pool.free, 0, 'a view given twice counts once: b still holds it')
  t.throws(() => pool.view(a, 0, 1), /given back/, 'a view of a view given back is a bug, said loudly')
  pool.give(b)
  t.equal(pool.free, 1, 'back once the last view is')
  const plain = Buffer.alloc(10)
  t.equal(pool.view(plain, 2, 4).length, 2, 'a view of foreign memory is a plain subarray')
})

t.test('a stale shared view given again after its memory went to take() does not free the new owner\'s buffer', async t => {
  const pool = new BufferPool(1024, 4)
  const slab = pool.takeShared()
  const v = pool.view(slab, 0, 10)
  pool.give(slab)
  pool.give(v)
  const owned = pool.take()
  t.equal(owned.buffer, slab.buffer, 'the same memory, now owned')
  pool.give(v)
  t.equal(pool.free, 0, 'the stale give is ignored')
  pool.give(owned)
  t.equal(pool.free, 1)
})

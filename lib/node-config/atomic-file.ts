// A file replaced whole or not at all: the new text goes to a temp file of a
// name no other writer uses, in the same directory (so the rename cannot
// cross filesystems), is flushed, and renamed over the old one. A reader
// (containerd, CRI-O, a second configurator) sees the old file or the new
// one, never half of either; two writers of the same text leave that text.

import { randomBytes } from 'node:crypto'
import { open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

export async function writeFileAtomic (path: string, text: string, mode = 0o644): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  try {
    const handle = await open(temp, 'wx', mode)
    try {
      await handle.writeFile(text, 'utf8')
      // open() applies the umask; the mode is what the file being replaced had.
      await handle.chmod(mode)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(temp, path)
  } catch (err) {
    await rm(temp, { force: true }).catch(() => {})
    throw err
  }
}

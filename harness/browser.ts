// A real browser for the status page's tests: Debian's chromium, driven by
// playwright-core over the DevTools protocol. Nothing is downloaded: the
// executable is the system's (CHROMIUM, or chromium on the PATH). Every
// request any page of it makes is recorded, so a test can show that nothing
// left for another host.

import { chromium, type Browser, type BrowserContext, type BrowserContextOptions } from 'playwright-core'
import { findOnPath } from './tools.js'

export interface SeenByBrowser {
  readonly url: string
  readonly method: string
  readonly resourceType: string
}

export class HeadlessBrowser {
  readonly #browser: Browser
  readonly requests: SeenByBrowser[] = []

  private constructor (browser: Browser) {
    this.#browser = browser
  }

  static executable (): string | undefined {
    return process.env.CHROMIUM ?? findOnPath('chromium')
  }

  static async launch (): Promise<HeadlessBrowser> {
    const executablePath = HeadlessBrowser.executable()
    if (executablePath === undefined) throw new Error('no chromium on the PATH (apt-get install chromium), and CHROMIUM is not set')
    // --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
    const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
    return new HeadlessBrowser(browser)
  }

  get version (): string { return this.#browser.version() }

  /** A fresh profile (no cookies) whose every request is recorded. */
  async context (options: BrowserContextOptions = {}): Promise<BrowserContext> {
    const context = await this.#browser.newContext(options)
    context.on('request', request => {
      this.requests.push({ url: request.url(), method: request.method(), resourceType: request.resourceType() })
    })
    return context
  }

  async close (): Promise<void> {
    await this.#browser.close()
  }
}

export async function simulateShop(app, options) {
  const rate = options.rate ?? 20;
  const customers = options.customers ?? 50;
  const burstEvery = (options.burstEverySeconds ?? 15) * 1000;
  const burstSize = options.burstSize ?? 500;
  let appended = 0;
  let orderNo = 0;
  let lastBurst = Date.now();
  const order = () => {
    orderNo += 1;
    const orderId = `${Date.now().toString(36)}-${orderNo}`;
    const customerId = `customer-${1 + Math.floor(Math.random() * customers)}`;
    const amountCents = 500 + Math.floor(Math.random() * 20_000);
    const refund = Math.random() < 0.05;
    return {
      stream: `order-${orderId}`,
      type: refund ? 'OrderRefunded' : 'OrderPlaced',
      data: { orderId, customerId, amountCents },
    };
  };
  while (!options.signal.aborted) {
    const burst = Date.now() - lastBurst >= burstEvery;
    if (burst) lastBurst = Date.now();
    const batch = Array.from({ length: burst ? burstSize : Math.max(1, Math.round(rate / 5)) }, order);
    try {
      await app.events.append(batch);
      appended += batch.length;
      options.onAppended?.(batch.length);
    } catch (error) {
      if (options.signal.aborted) break;
      app.log.warn({ err: error }, 'simulator append failed; trying again');
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return appended;
}
//# sourceMappingURL=simulator.js.map

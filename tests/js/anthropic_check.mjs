// Drives the gateway's /v1/messages with the official @anthropic-ai/sdk package; prints a JSON report.
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "hello from node" }];

const message = await client.messages.create({ model, max_tokens: 50, messages });
const stream = client.messages.stream({ model, max_tokens: 50, messages });
let streamed = "";
stream.on("text", (text) => { streamed += text; });
await stream.finalMessage();
const counted = await client.messages.countTokens({ model, messages });
let notFound = null;
try {
  await client.messages.create({ model: "no-such-model", max_tokens: 5, messages });
} catch (error) {
  notFound = { cls: error.constructor.name, status: error.status };
}
console.log(JSON.stringify({ text: message.content[0].text, streamed, usage: message.usage,
                             tokens: counted.input_tokens, notFound }));

// Drives the gateway's /v1/messages with the Vercel AI SDK's Anthropic provider (ai + @ai-sdk/anthropic):
// a tool round (the upstream is told to call the tool first), then text and a text stream. Prints a JSON report.
import { createAnthropic } from "@ai-sdk/anthropic";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, apiKey, model, textModel] = process.argv.slice(2);
const provider = createAnthropic({ baseURL: `${baseURL}/v1`, apiKey });

let toolRanWith = null;
const withTools = await generateText({
  model: provider(model), prompt: "weather in Paris?", maxOutputTokens: 100, stopWhen: stepCountIs(2),
  tools: {
    get_weather: tool({
      description: "Current weather for a city", inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => { toolRanWith = city; return `sunny in ${city}`; },
    }),
  },
});
const text = await generateText({ model: provider(textModel), prompt: "hello from the ai sdk", maxOutputTokens: 50 });
const stream = streamText({ model: provider(textModel), prompt: "stream from the ai sdk", maxOutputTokens: 50 });
let streamed = "";
for await (const piece of stream.textStream) streamed += piece;
const usage = await stream.usage;
console.log(JSON.stringify({ toolRanWith, toolText: withTools.text, steps: withTools.steps.length, text: text.text,
                             streamed, usage: text.usage, streamUsage: usage }));

// Types a Grafana dashboard JSON file must satisfy, from @grafana/schema. check-deploy.sh writes
// one .ts file per dashboard (`export const dashboard: DashboardJson = <the JSON>;`) and runs tsc.
//
// The schema's string enums (ThresholdsMode, ...) are TypeScript enums, which a JSON string can
// never be assigned to; Wire<T> turns them back into the string values the JSON carries. Panel
// options are checked against each panel plugin's own schema, keys exactly, values deeply
// partial (Grafana fills in defaults).
import type { Dashboard, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as Table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

export type Wire<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Wire<U>>
      : T extends object
        ? { [K in keyof T]: Wire<T[K]> }
        : T;

export type PartialWire<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<PartialWire<U>>
      : T extends object
        ? { [K in keyof T]?: PartialWire<T[K]> }
        : T;

type PanelJsonOf<Type extends string, Options, Custom> = Wire<Omit<Panel, 'type' | 'options' | 'fieldConfig'>> & {
  type: Type;
  options?: PartialWire<Options>;
  fieldConfig?: {
    defaults: Wire<Omit<FieldConfig, 'custom'>> & { custom?: PartialWire<Custom> };
    overrides: Wire<FieldConfigSource['overrides']>;
  };
};

// A panel type not listed here is a type error: add its plugin's schema when a dashboard uses it.
export type PanelJson =
  | PanelJsonOf<'timeseries', TimeSeries.Options, TimeSeries.FieldConfig>
  | PanelJsonOf<'stat', Stat.Options, Record<string, never>>
  | PanelJsonOf<'table', Table.Options, Table.FieldConfig>;

export type RowJson = Wire<Omit<RowPanel, 'panels'>> & { panels: PanelJson[] };

export type DashboardJson = Wire<Omit<Dashboard, 'panels'>> & { panels?: Array<PanelJson | RowJson> };
